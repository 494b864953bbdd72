"""Rolling update of 20 replicas (parallelism 5, delay 0) from minisw/web:1 to :2: minisw against
Docker's Swarm mode on the same daemon. Prints one JSON object.

The figure is the time from the update request until all 20 running tasks run the new image.
Run: ``python bench/bench_update.py`` (about a minute).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker

from tests.support.cluster import Cluster, poll_until

REPLICAS, PARALLELISM = 20, 5


def _minisw(tmp: str) -> float:
    c = Cluster(Path(tmp, "minisw"))
    c.root.mkdir(parents=True)
    try:
        c.start_managers(1)
        c.add_agent()
        c.add_agent()
        c.cli_ok(
            "service",
            "create",
            "-d",
            "--name",
            "bench",
            "--replicas",
            str(REPLICAS),
            "--update-parallelism",
            str(PARALLELISM),
            "--update-delay",
            "0s",
            "minisw/web:1",
        )
        poll_until(lambda: len(c.running_tasks("bench")) == REPLICAS, 120, interval=0.05)
        t0 = time.monotonic()
        c.cli_ok("service", "update", "-d", "--image", "minisw/web:2", "bench")

        def done() -> bool:
            running = c.running_tasks("bench")
            return len(running) == REPLICAS and all(t.spec.container.image == "minisw/web:2" for t in running)

        poll_until(done, 300, interval=0.02)
        return time.monotonic() - t0
    finally:
        c.teardown()


def _running(service: Any) -> list[dict[str, Any]]:
    return [t for t in service.tasks() if t["Status"]["State"] == "running" and t["DesiredState"] == "running"]


def _swarm() -> float:
    client = docker.from_env()
    already = client.info().get("Swarm", {}).get("LocalNodeState") == "active"
    if not already:
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    try:
        service = client.services.create(
            "minisw/web:1",
            name="minisw-bench-update",
            mode=docker.types.ServiceMode("replicated", REPLICAS),
            update_config=docker.types.UpdateConfig(parallelism=PARALLELISM, delay=0),
        )
        poll_until(lambda: len(_running(service)) == REPLICAS, 180, interval=0.05)
        service.reload()
        t0 = time.monotonic()
        service.update(image="minisw/web:2")

        def done() -> bool:
            running = _running(service)
            return len(running) == REPLICAS and all(
                t["Spec"]["ContainerSpec"]["Image"].startswith("minisw/web:2") for t in running
            )

        poll_until(done, 300, interval=0.02)
        elapsed = time.monotonic() - t0
        service.remove()
        label = {"label": "com.docker.swarm.service.name=minisw-bench-update"}
        poll_until(lambda: not client.api.containers(all=True, filters=label), 60)
        return elapsed
    finally:
        if not already:
            client.swarm.leave(force=True)
        client.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mine = _minisw(tmp)
    theirs = _swarm()
    print(
        json.dumps(
            {
                "replicas": REPLICAS,
                "parallelism": PARALLELISM,
                "minisw_seconds": round(mine, 2),
                "docker_swarm_seconds": round(theirs, 2),
                "speedup": round(theirs / mine, 2),
                "target": "minisw no slower (speedup >= 1)",
            }
        )
    )


if __name__ == "__main__":
    main()

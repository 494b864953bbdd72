"""Agent benchmarks against Docker's own Swarm mode on the same daemon; prints one JSON object.

- ``create_20_seconds``: ``service create --replicas 20`` of minisw/web:1 until 20 tasks run;
- ``kill_to_replacement_seconds``: ``docker kill`` of one task's container until its
  replacement runs (default restart policy on both: 5 s delay);
- ``dead_agent_seconds`` (minisw only): SIGKILL of an agent holding tasks until all of them run
  elsewhere.

minisw runs 1 manager and 2 agents on loopback; Swarm runs as a one-node swarm (``docker swarm
init``, left afterwards). Run: ``python bench/bench_agents.py`` (about two minutes).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker

from minisw.proto import objects_pb2 as pb
from tests.support.cluster import Cluster, poll_until

REPLICAS = 20


def _minisw(tmp: str) -> dict[str, float]:
    c = Cluster(Path(tmp, "minisw"))
    c.root.mkdir(parents=True)
    try:
        c.start_managers(1)
        c.add_agent()
        c.add_agent()
        t0 = time.monotonic()
        c.cli_ok("service", "create", "-d", "--name", "bench", "--replicas", str(REPLICAS), "minisw/web:1")
        poll_until(lambda: len(c.running_tasks("bench")) == REPLICAS, 120, interval=0.02)
        create = time.monotonic() - t0

        victim = c.running_tasks("bench")[0]
        t0 = time.monotonic()
        subprocess.run(["docker", "kill", victim.status.container.container_id], check=True, capture_output=True)
        poll_until(
            lambda: any(t.slot == victim.slot and t.id != victim.id for t in c.running_tasks("bench")),
            60,
            interval=0.02,
        )
        replace = time.monotonic() - t0

        doomed = c.agents[1]
        doomed_id = next(n.id for n in c.nodes() if n.description.hostname == doomed.name)
        t0 = time.monotonic()
        doomed.kill()
        poll_until(
            lambda: len([t for t in c.running_tasks("bench") if t.node_id != doomed_id]) == REPLICAS,
            60,
            interval=0.05,
        )
        dead = time.monotonic() - t0
        return {"create_20_seconds": create, "kill_to_replacement_seconds": replace, "dead_agent_seconds": dead}
    finally:
        c.teardown()


def _running(service: Any) -> list[dict[str, Any]]:
    return [t for t in service.tasks() if t["Status"]["State"] == "running" and t["DesiredState"] == "running"]


def _victim(client: Any, service: Any) -> tuple[dict[str, Any], Any]:
    """A running task whose container this daemon knows (task lists can lag behind containers)."""
    for task in _running(service):
        try:
            return task, client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
        except docker.errors.NotFound:
            continue
    raise RuntimeError("no running Swarm task has a container")


def _swarm() -> dict[str, float]:
    client = docker.from_env()
    already = client.info().get("Swarm", {}).get("LocalNodeState") == "active"
    if not already:
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    try:
        t0 = time.monotonic()
        service = client.services.create(
            "minisw/web:1", name="minisw-bench", mode=docker.types.ServiceMode("replicated", REPLICAS)
        )
        poll_until(lambda: len(_running(service)) == REPLICAS, 180, interval=0.02)
        create = time.monotonic() - t0
        victim, container = _victim(client, service)
        t0 = time.monotonic()
        container.kill()
        poll_until(
            lambda: any(t["Slot"] == victim["Slot"] and t["ID"] != victim["ID"] for t in _running(service)),
            60,
            interval=0.02,
        )
        replace = time.monotonic() - t0
        service.remove()
        label = {"label": "com.docker.swarm.service.name=minisw-bench"}
        poll_until(lambda: not client.api.containers(all=True, filters=label), 60)
        return {"create_20_seconds": create, "kill_to_replacement_seconds": replace}
    finally:
        if not already:
            client.swarm.leave(force=True)
        client.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mine = _minisw(tmp)
    theirs = _swarm()
    out: dict[str, Any] = {
        "minisw": {k: round(v, 2) for k, v in mine.items()},
        "docker_swarm": {k: round(v, 2) for k, v in theirs.items()},
        "speedup": {k: round(theirs[k] / mine[k], 2) for k in theirs},
        "targets": {"speedup": "> 1 on both", "dead_agent_seconds": "<= 10"},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    _ = pb
    main()

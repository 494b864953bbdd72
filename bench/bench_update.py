"""Rolling update of N replicas (parallelism 5, delay 0) from minisw/web:1 to :2: minisw against
Docker's Swarm mode. Prints one JSON object; every figure is the median of ``--runs`` runs, with
its spread (see ``figures.py``).

The figure is the time from the update request until all N running tasks run the new image. Both
sides are driven the same way: ``service create -d`` and ``service update -d --image`` with each
system's own CLI as a process (``--no-resolve-image`` for docker's), then its API polled every
20 ms. Swarm runs three ways, as in ``bench_agents.py``: on the machine's daemon, on a daemon of
the benchmark's own, and on one with ``DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1`` (no registry pull
attempt before each task); ``failed_pulls`` counts the own daemons' "pulling image failed" lines.

Run: ``python bench/bench_update.py`` (about five minutes; ``--replicas 5 --runs 1`` to try it).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import figure, runs_parser
from bench.private_dockerd import private_dockerd
from bench.swarm_mode import SwarmMode
from tests.support.cluster import Cluster, poll_until

PARALLELISM = 5
PREFER_OFFLINE = {"DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"}
SERVICE_FLAGS = ["--update-parallelism", str(PARALLELISM), "--update-delay", "0s"]


def _minisw_run(tmp: str, replicas: int) -> float:
    c = Cluster(Path(tmp))
    c.root.mkdir(parents=True)
    try:
        c.start_managers(1)
        c.add_agent()
        c.add_agent()
        c.cli_ok(
            "service", "create", "-d", "--name", "bench", "--replicas", str(replicas), *SERVICE_FLAGS, "minisw/web:1"
        )
        poll_until(lambda: len(c.running_tasks("bench")) == replicas, 120, interval=0.05)
        t0 = time.monotonic()
        c.cli_ok("service", "update", "-d", "--image", "minisw/web:2", "bench")

        def done() -> bool:
            running = c.running_tasks("bench")
            return len(running) == replicas and all(t.spec.container.image == "minisw/web:2" for t in running)

        poll_until(done, 300, interval=0.02)
        return time.monotonic() - t0
    finally:
        c.teardown()


def _swarm_run(swarm: SwarmMode, replicas: int) -> float:
    name = "minisw-bench-update"
    flags = ["--no-resolve-image", "--name", name, "--replicas", str(replicas), *SERVICE_FLAGS]
    swarm.cli("service", "create", "-d", *flags, "minisw/web:1")
    poll_until(lambda: len(swarm.running(name)) == replicas, 180, interval=0.05)
    t0 = time.monotonic()
    swarm.cli("service", "update", "-d", "--no-resolve-image", "--image", "minisw/web:2", name)

    def done() -> bool:
        running = swarm.running(name)
        return len(running) == replicas and all(
            t["Spec"]["ContainerSpec"]["Image"].startswith("minisw/web:2") for t in running
        )

    poll_until(done, 300, interval=0.02)
    elapsed = time.monotonic() - t0
    swarm.remove_service(name)
    return elapsed


def _swarm_runs(host: str | None, replicas: int, runs: int) -> list[float]:
    with SwarmMode(host) as swarm:
        return [_swarm_run(swarm, replicas) for _ in range(runs)]


def main() -> None:
    parser = runs_parser(__doc__ or "")
    parser.add_argument("--replicas", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mine = [_minisw_run(f"{tmp}/run{i}", args.replicas) for i in range(args.runs)]
    theirs = {"docker_swarm": _swarm_runs(None, args.replicas, args.runs)}
    failed_pulls: dict[str, int] = {}
    for variant, env in (("docker_swarm_own_daemon", {}), ("docker_swarm_prefer_offline", PREFER_OFFLINE)):
        with private_dockerd("update", ["minisw/web:1", "minisw/web:2"], env) as daemon:
            theirs[variant] = _swarm_runs(daemon.host, args.replicas, args.runs)
            failed_pulls[variant] = daemon.log().count("pulling image failed")
    mine_figure = figure(mine, 2)
    out: dict[str, Any] = {
        "replicas": args.replicas,
        "parallelism": PARALLELISM,
        "driven_by": "each system's CLI as a process, then its API polled every 20 ms",
        "seconds": {"minisw": mine_figure, **{variant: figure(runs, 2) for variant, runs in theirs.items()}},
        "failed_pulls": failed_pulls,
        "speedup_by_median": {
            variant: round(figure(runs, 2)["median"] / mine_figure["median"], 2) for variant, runs in theirs.items()
        },
        "target": "minisw no slower than docker_swarm (speedup_by_median.docker_swarm >= 1)",
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

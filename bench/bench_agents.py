"""Agent benchmarks against Docker's own Swarm mode; prints one JSON object. Every figure is the
median of ``--runs`` runs, with its spread (see ``figures.py``).

- ``create_<N>_seconds``: ``service create -d --replicas N`` of minisw/web:1 until N tasks run;
- ``kill_to_replacement_seconds``: ``docker kill`` of one task's container until its
  replacement runs (default restart policy on both: 5 s delay);
- ``dead_agent_seconds`` (minisw only): SIGKILL of an agent holding tasks until all of them run
  elsewhere.

Both sides are driven the same way: each system's own CLI as a process (``minisw service create
-d`` / ``docker service create -d --no-resolve-image``, then ``docker kill``), then polling its
API every 20 ms. minisw runs 1 manager and 2 agents on loopback on the machine's daemon. Swarm
runs as a one-node swarm three ways, to see what its executor spends on the registry pulls it
tries before every task (there is no registry here; it falls back to the local image):

- ``docker_swarm``: on the machine's daemon, as it comes;
- ``docker_swarm_own_daemon``: on a daemon of the benchmark's own (``private_dockerd.py``), as it comes;
- ``docker_swarm_prefer_offline``: the same with ``DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1``, which
  skips the pull when the image is present.

``failed_pulls`` counts the daemon's "pulling image failed" log lines (own daemons only).
Run: ``python bench/bench_agents.py`` (about ten minutes; ``--replicas 4 --runs 1`` to try it).
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

from bench.figures import figure, runs_parser
from bench.private_dockerd import private_dockerd
from bench.swarm_mode import SwarmMode
from tests.support.cluster import Cluster, poll_until

PREFER_OFFLINE = {"DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"}


def _minisw_run(tmp: str, replicas: int) -> dict[str, float]:
    c = Cluster(Path(tmp))
    c.root.mkdir(parents=True)
    try:
        c.start_managers(1)
        c.add_agent()
        c.add_agent()
        t0 = time.monotonic()
        c.cli_ok("service", "create", "-d", "--name", "bench", "--replicas", str(replicas), "minisw/web:1")
        poll_until(lambda: len(c.running_tasks("bench")) == replicas, 120, interval=0.02)
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
            lambda: len([t for t in c.running_tasks("bench") if t.node_id != doomed_id]) == replicas,
            60,
            interval=0.05,
        )
        dead = time.monotonic() - t0
        return {
            f"create_{replicas}_seconds": create,
            "kill_to_replacement_seconds": replace,
            "dead_agent_seconds": dead,
        }
    finally:
        c.teardown()


def _swarm_run(swarm: SwarmMode, replicas: int) -> dict[str, float]:
    name = "minisw-bench"
    t0 = time.monotonic()
    swarm.cli(
        "service", "create", "-d", "--no-resolve-image", "--name", name, "--replicas", str(replicas), "minisw/web:1"
    )
    poll_until(lambda: len(swarm.running(name)) == replicas, 180, interval=0.02)
    create = time.monotonic() - t0

    victim = swarm.running(name)[0]
    t0 = time.monotonic()
    swarm.cli("kill", victim["Status"]["ContainerStatus"]["ContainerID"])
    poll_until(
        lambda: any(t["Slot"] == victim["Slot"] and t["ID"] != victim["ID"] for t in swarm.running(name)),
        60,
        interval=0.02,
    )
    replace = time.monotonic() - t0
    swarm.remove_service(name)
    return {f"create_{replicas}_seconds": create, "kill_to_replacement_seconds": replace}


def _swarm_runs(host: str | None, replicas: int, runs: int) -> list[dict[str, float]]:
    with SwarmMode(host) as swarm:
        return [_swarm_run(swarm, replicas) for _ in range(runs)]


def main() -> None:
    parser = runs_parser(__doc__ or "")
    parser.add_argument("--replicas", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mine = [_minisw_run(f"{tmp}/run{i}", args.replicas) for i in range(args.runs)]
    theirs: dict[str, list[dict[str, float]]] = {"docker_swarm": _swarm_runs(None, args.replicas, args.runs)}
    failed_pulls: dict[str, int] = {}
    for variant, env in (("docker_swarm_own_daemon", {}), ("docker_swarm_prefer_offline", PREFER_OFFLINE)):
        with private_dockerd("agents", ["minisw/web:1"], env) as daemon:
            theirs[variant] = _swarm_runs(daemon.host, args.replicas, args.runs)
            failed_pulls[variant] = daemon.log().count("pulling image failed")

    def summary(runs: list[dict[str, float]]) -> dict[str, Any]:
        return {key: figure((r[key] for r in runs), 2) for key in runs[0]}

    out: dict[str, Any] = {
        "replicas": args.replicas,
        "driven_by": "each system's CLI as a process, then its API polled every 20 ms",
        "minisw": summary(mine),
        **{variant: summary(runs) for variant, runs in theirs.items()},
        "failed_pulls": failed_pulls,
        "speedup_by_median": {
            variant: {key: round(summary(runs)[key]["median"] / summary(mine)[key]["median"], 2) for key in runs[0]}
            for variant, runs in theirs.items()
        },
        "targets": {"speedup_by_median.docker_swarm": "> 1 on both", "minisw.dead_agent_seconds": "<= 10"},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

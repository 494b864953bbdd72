"""Separate hosts benchmarks (`minisw dev up --hosts`); prints one JSON object. Every figure is the
median of ``--runs`` runs with its spread (see ``figures.py``).

- ``dev_up_5_hosts_to_accepting_service_seconds``: `dev up --hosts --managers 3 --workers 2` on a
  fresh directory until a `service create -d` is accepted;
- ``host_death_to_tasks_elsewhere_seconds``: `dev kill` of a worker host that runs tasks until all
  of them run on other hosts, with ``--restart-delay 0s`` and with the default (5 s);
  targets <= 4 s and <= 9 s (Swarm's defaults take about 20 s: 5 s heartbeats, down after 3);
- ``create_20_across_3_hosts``: `service create -d --replicas 20` on 1 manager + 2 workers until
  20 run, beside the floor: 20 `docker run -d` of the same image started at once through the same
  three hosts' daemons; ``ratio`` = minisw / floor.

Run as root: ``python bench/bench_hosts.py`` (about five minutes; ``--runs 1`` to try it).
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import figure, runs_parser
from minisw.proto import control_pb2 as api
from minisw.proto import objects_pb2 as pb
from tests.support.hosts import HostsCluster

POLL = 0.02


def wait(check: Any, timeout: float, what: str) -> float:
    """Poll ``check`` every 20 ms; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return time.monotonic()
        except AssertionError:
            pass
        time.sleep(POLL)
    raise TimeoutError(f"timed out waiting for {what}")


def dev_up(root: Path) -> float:
    cluster = HostsCluster(root, managers=3, workers=2)
    start = time.monotonic()
    try:
        cluster.up()
        cluster.cli_ok("service", "create", "--detach", "--name", "probe", "minisw/web:1")
        return time.monotonic() - start
    finally:
        cluster.dev("down", check=False)


def host_death(cluster: HostsCluster, delay: str, name: str) -> float:
    """Seconds from `dev kill worker1` until every replica runs on another host."""
    cluster.cli_ok("service", "create", "--detach", "--name", name, "--replicas", "5", "--restart-delay", delay,
                   "minisw/web:1")  # fmt: skip
    names = cluster.node_names()
    wait(lambda: len(cluster.running(name)) == 5, 60, "5 running")
    assert any(names[t.node_id] == "worker1" for t in cluster.running(name))
    killed = time.monotonic()
    cluster.kill("worker1")

    def moved() -> bool:
        now = cluster.running(name)
        return len(now) == 5 and all(names[t.node_id] != "worker1" for t in now)

    elapsed = wait(moved, 60, "tasks elsewhere") - killed
    cluster.cli_ok("service", "rm", name)
    cluster.start("worker1")
    wait(lambda: "worker1" in _ready_nodes(cluster), 30, "worker1 ready")
    return elapsed


def _ready_nodes(cluster: HostsCluster) -> set[str]:
    listed = cluster.stub_call("ListNodes", api.ListNodesRequest()).nodes
    return {n.description.hostname for n in listed if n.status.state == pb.NodeStatus.READY}


def create_20(cluster: HostsCluster, run: int) -> float:
    name = f"twenty{run}"
    start = time.monotonic()
    cluster.cli_ok("service", "create", "--detach", "--name", name, "--replicas", "20", "minisw/web:1")
    elapsed = wait(lambda: len(cluster.running(name)) == 20, 120, "20 running") - start
    cluster.cli_ok("service", "rm", name)
    wait(lambda: not any(cluster.containers(n, all_states=True) for n in cluster.nodes()), 60, "containers gone")
    return elapsed


def floor_20(cluster: HostsCluster, run: int) -> float:
    """20 `docker run -d` at once through the three hosts' daemons, until the last returns."""
    hosts = [cluster.docker_host(n) for n in cluster.nodes()]

    def one(i: int) -> None:
        subprocess.run(
            ["docker", "-H", hosts[i % len(hosts)], "run", "-d", "--name", f"floor{run}-{i}", "minisw/web:1"],
            check=True,
            capture_output=True,
        )

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        list(pool.map(one, range(20)))
    elapsed = time.monotonic() - start
    for i in range(20):
        host = hosts[i % len(hosts)]
        subprocess.run(["docker", "-H", host, "rm", "-f", f"floor{run}-{i}"], capture_output=True)
    return elapsed


def main() -> None:
    args = runs_parser(__doc__ or "").parse_args()
    result: dict[str, Any] = {"runs": args.runs}
    with tempfile.TemporaryDirectory(prefix="bench-hosts-") as tmp:
        root = Path(tmp)
        ups = [dev_up(root / f"up{i}") for i in range(args.runs)]
        result["dev_up_5_hosts_to_accepting_service_seconds"] = figure(ups)

        cluster = HostsCluster(root / "death", managers=3, workers=2)
        cluster.up()
        try:
            zero = [host_death(cluster, "0s", f"zero{i}") for i in range(args.runs)]
            default = [host_death(cluster, "5s", f"default{i}") for i in range(args.runs)]
        finally:
            cluster.dev("down", check=False)
        result["host_death_to_tasks_elsewhere_seconds"] = {
            "restart_delay_0s": figure(zero),
            "restart_delay_default_5s": figure(default),
            "targets": {"restart_delay_0s": 4.0, "restart_delay_default_5s": 9.0},
        }

        cluster = HostsCluster(root / "twenty", managers=1, workers=2)
        cluster.up()
        try:
            minisw, floor = [], []
            for i in range(args.runs):  # side by side, alternating
                floor.append(floor_20(cluster, i))
                minisw.append(create_20(cluster, i))
        finally:
            cluster.dev("down", check=False)
        result["create_20_across_3_hosts"] = {
            "minisw_seconds": figure(minisw),
            "floor_docker_run_seconds": figure(floor),
            "ratio": round(sorted(minisw)[len(minisw) // 2] / sorted(floor)[len(floor) // 2], 2),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

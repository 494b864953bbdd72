"""Chaos run on separate hosts; prints one JSON object.

A fixed, seeded sequence of ``--faults`` random faults, each bounded in time and undone before
the next (kill a host, partition the leader from the other managers, partition or cut a worker,
pause the leader briefly or for seconds, pause a worker host, kill two of three managers, restart
every host), while a client creates, updates, scales and removes services through the CLI and
records every write it got an acknowledgement for (``tests/support/invariants.Ledger``).
At the end, once the cluster settles: the invariants of ``tests/support/invariants.py``,
``acknowledged_writes_lost`` (must be 0), ``slots_ran_twice_after_settling`` (must be 0) and
``reconverge_seconds`` after the last fault.

Run as root: ``python bench/chaos.py --faults 100 --seed 7`` (about 15 minutes).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minisw.proto import control_pb2 as api
from tests.support.hosts import HostsCluster
from tests.support.invariants import Ledger, settle, violations

MANAGERS = ["manager1", "manager2", "manager3"]
WORKERS = ["worker1", "worker2"]
FAULTS = {  # kind -> weight
    "kill_host": 5,
    "partition_leader": 3,
    "partition_worker": 2,
    "cut_worker": 2,
    "pause_leader_briefly": 4,
    "pause_leader_seconds": 2,
    "pause_worker_host": 2,
    "kill_two_managers": 1,
    "restart_every_host": 1,
}


class Client(threading.Thread):
    """Creates, scales, updates and removes services through the CLI, recording what was acknowledged."""

    def __init__(self, hosts: HostsCluster, ledger: Ledger, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.hosts, self.ledger, self.rng = hosts, ledger, rng
        self.stop = threading.Event()
        self.ops: collections.Counter[str] = collections.Counter()
        self.live: list[str] = []
        self.serial = 0

    def _cli(self, *args: str) -> bool:
        managers = self.hosts.manager_addrs()
        if not managers:
            return False
        try:
            result = self.hosts.cli(*args, at=self.rng.choice(managers), timeout=20)
        except Exception:  # timed out: the outcome is unknown
            return False
        return result.returncode == 0

    def run(self) -> None:
        while not self.stop.is_set():
            op = self.rng.choice(["create", "scale", "update", "remove"] if self.live else ["create"])
            if op == "create" and len(self.live) < 6:
                self.serial += 1
                name, replicas = f"s{self.serial}", self.rng.randint(1, 3)
                acked = self._cli("service", "create", "--detach", "--name", name, "--replicas", str(replicas),
                                  "--restart-delay", "1s", "minisw/web:1")  # fmt: skip
                self.ledger.created(name, replicas, "minisw/web:1", acked)
                self.live.append(name)
            elif op == "scale" and self.live:
                name, replicas = self.rng.choice(self.live), self.rng.randint(1, 4)
                self.ledger.scaled(name, replicas, self._cli("service", "scale", "--detach", f"{name}={replicas}"))
            elif op == "update" and self.live:
                name, image = self.rng.choice(self.live), self.rng.choice(["minisw/web:1", "minisw/web:2"])
                acked = self._cli("service", "update", "--detach", "--image", image, name)
                self.ledger.updated(name, image, acked)
            elif op == "remove" and len(self.live) > 2:
                name = self.rng.choice(self.live)
                self.ledger.gone(name, self._cli("service", "rm", name))
                self.live.remove(name)
            else:
                continue
            self.ops[op] += 1
            self.stop.wait(self.rng.uniform(0.2, 1.0))


def pause_manager(hosts: HostsCluster, node: str, seconds: float) -> None:
    pid = hosts.process(node, "manager")["pid"]
    if not pid:
        return
    os.kill(pid, signal.SIGSTOP)
    time.sleep(seconds)
    os.kill(pid, signal.SIGCONT)


def inject(hosts: HostsCluster, kind: str, rng: random.Random) -> None:
    leader = hosts.leader_node() or rng.choice(MANAGERS)
    hold = rng.uniform(1.0, 4.0)
    if kind == "kill_host":
        node = rng.choice(MANAGERS + WORKERS)
        hosts.kill(node)
        time.sleep(hold)
        hosts.start(node)
    elif kind == "partition_leader":
        hosts.partition([leader], [m for m in MANAGERS if m != leader])
        time.sleep(hold + 1)
        hosts.heal()
    elif kind == "partition_worker":
        worker = rng.choice(WORKERS)
        hosts.partition([worker], [n for n in MANAGERS + WORKERS if n != worker])
        time.sleep(hold)
        hosts.heal()
    elif kind == "cut_worker":
        worker = rng.choice(WORKERS)
        hosts.cut(worker)
        time.sleep(hold)
        hosts.heal()
    elif kind == "pause_leader_briefly":
        pause_manager(hosts, leader, rng.uniform(0.8, 1.4))
    elif kind == "pause_leader_seconds":
        pause_manager(hosts, leader, hold + 2)
    elif kind == "pause_worker_host":
        worker = rng.choice(WORKERS)
        hosts.pause(worker)
        time.sleep(hold)
        hosts.resume(worker)
    elif kind == "kill_two_managers":
        lost = rng.sample(MANAGERS, 2)
        for node in lost:
            hosts.kill(node)
        time.sleep(hold)
        for node in lost:
            hosts.start(node)
    elif kind == "restart_every_host":
        for node in MANAGERS + WORKERS:
            hosts.kill(node)
        hosts.dev("up")


def slots_running_twice(hosts: HostsCluster) -> int:
    """Slots with more than one running container across every host's daemon."""
    seen: collections.Counter[tuple[str, str]] = collections.Counter()
    for node in hosts.nodes():
        for c in hosts.containers(node):
            labels = c["Labels"]
            seen[(labels["minisw.service.id"], labels["minisw.task.slot"])] += 1
    return sum(1 for (_, slot), count in seen.items() if count > 1 and slot != "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--faults", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    kinds = list(FAULTS)
    plan = rng.choices(kinds, weights=[FAULTS[k] for k in kinds], k=args.faults)
    ledger = Ledger()
    result: dict[str, Any] = {"seed": args.seed, "faults": args.faults, "faults_by_kind": collections.Counter(plan)}
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        hosts = HostsCluster(Path(tmp), managers=3, workers=2)
        hosts.up()
        started = time.monotonic()
        client = Client(hosts, ledger, random.Random(args.seed + 1))
        client.start()
        try:
            for i, kind in enumerate(plan):
                inject(hosts, kind, rng)
                print(f"fault {i + 1}/{len(plan)}: {kind}", file=sys.stderr, flush=True)
                time.sleep(rng.uniform(0.5, 1.5))
            client.stop.set()
            client.join(60)
            last_fault = time.monotonic()
            try:
                settle(hosts, ledger, timeout=180)
                result["invariants_hold"] = True
            except AssertionError as err:
                result["invariants_hold"] = False
                result["violations"] = str(err)
            result["reconverge_seconds"] = round(time.monotonic() - last_fault, 2)
            present = {}
            for v in violations(hosts, None):
                result.setdefault("remaining_violations", []).append(v)
            for svc in hosts.stub_call("ListServices", api.ListServicesRequest()).services:
                present[svc.spec.annotations.name] = (svc.spec.replicated.replicas, svc.spec.task.container.image)
            lost = ledger.lost(present)
            result["acknowledged_writes"] = ledger.acknowledged
            result["acknowledged_writes_lost"] = len(lost)
            if lost:
                result["lost"] = lost
            result["slots_ran_twice_after_settling"] = slots_running_twice(hosts)
            result["client_ops"] = dict(client.ops)
            result["duration_seconds"] = round(time.monotonic() - started, 1)
        except BaseException:
            print(hosts.logs(), file=sys.stderr)
            raise
        finally:
            client.stop.set()
            hosts.dev("down", check=False)
    print(json.dumps(result, indent=2, default=dict))


if __name__ == "__main__":
    main()

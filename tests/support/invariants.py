"""What must hold on a cluster of separate hosts once it settles after faults, and a ledger of
the writes the CLI acknowledged (each must still be there).

Shared by the fault suite (tests/faults/) and the chaos run (bench/chaos.py).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

from minisw.proto import control_pb2 as api
from tests.support.hosts import HostsCluster

__all__ = ["Ledger", "settle", "violations"]

RUNNING, READY_NODE, DRAIN = 512, 2, 2


@dataclass
class Ledger:
    """The writes the CLI acknowledged, and what each service may therefore look like.

    A write that failed may or may not have happened (its outcome is unknown to the client), so it
    widens what is allowed rather than replacing it; an acknowledged one narrows it to its value.
    """

    services: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> allowed values
    removed: set[str] = field(default_factory=set)
    acknowledged: int = 0

    def _record(self, name: str, key: str, value: Any, acked: bool) -> None:
        entry = self.services.setdefault(name, {"replicas": set(), "image": set(), "exists": {True}})
        if acked:
            entry[key] = {value}
            self.acknowledged += 1
        else:
            entry[key].add(value)

    def created(self, name: str, replicas: int, image: str, acked: bool = True) -> None:
        if not acked:
            self.services.setdefault(name, {"replicas": set(), "image": set(), "exists": set()})
            self.services[name]["exists"] |= {True, False}
        self._record(name, "replicas", replicas, acked)
        self._record(name, "image", image, acked)
        if acked:
            self.services[name]["exists"] = {True}
            self.acknowledged -= 1  # one write, counted once
            self.removed.discard(name)

    def scaled(self, name: str, replicas: int, acked: bool = True) -> None:
        self._record(name, "replicas", replicas, acked)

    def updated(self, name: str, image: str, acked: bool = True) -> None:
        self._record(name, "image", image, acked)

    def gone(self, name: str, acked: bool = True) -> None:
        if acked:
            self.services.pop(name, None)
            self.removed.add(name)
            self.acknowledged += 1
        elif name in self.services:
            self.services[name]["exists"] |= {False}

    def lost(self, present: dict[str, tuple[int, str]]) -> list[str]:
        """The acknowledged writes that ``present`` (name -> (replicas, image)) does not show."""
        found = []
        for name, allowed in self.services.items():
            if name not in present:
                if False not in allowed["exists"]:
                    found.append(f"acknowledged service {name} is missing")
                continue
            replicas, image = present[name]
            if allowed["replicas"] and replicas not in allowed["replicas"]:
                found.append(f"{name}: {replicas} replicas, acknowledged {sorted(allowed['replicas'])}")
            if allowed["image"] and image not in allowed["image"]:
                found.append(f"{name}: image {image}, acknowledged {sorted(allowed['image'])}")
        found += [f"removed service {name} is back" for name in self.removed if name in present]
        return found


def _alive_hosts(hosts: HostsCluster) -> set[str]:
    status = hosts.status()
    return {r["name"] for r in status if r["role"] == "agent" and r["pid"]}


def violations(hosts: HostsCluster, ledger: Ledger | None = None) -> list[str]:
    """Every invariant that does not hold right now (empty once the cluster has settled)."""
    found: list[str] = []
    services = list(hosts.stub_call("ListServices", api.ListServicesRequest()).services)
    tasks = list(hosts.stub_call("ListTasks", api.ListTasksRequest()).tasks)
    nodes = list(hosts.stub_call("ListNodes", api.ListNodesRequest()).nodes)
    by_name = {s.spec.annotations.name: s for s in services}
    node_name = {n.id: n.description.hostname for n in nodes}
    alive = _alive_hosts(hosts)

    # Every acknowledged write is there.
    if ledger is not None:
        present = {n: (s.spec.replicated.replicas, s.spec.task.container.image) for n, s in by_name.items()}
        found += ledger.lost(present)

    # Each replicated service runs exactly its replicas, one task per slot; global ones on every
    # eligible node; no task on a drained node.
    live = [t for t in tasks if t.desired_state == RUNNING]
    for svc in services:
        mine = [t for t in live if t.service_id == svc.id]
        running = [t for t in mine if t.status.state == RUNNING]
        if svc.spec.HasField("replicated"):
            # Exactly its replicas, each slot once. (Which slots: scaling down removes tasks by
            # node, as Swarm does, not the highest slots.)
            have = sorted(t.slot for t in running)
            slots = collections.Counter(t.slot for t in mine)
            want = svc.spec.replicated.replicas
            if len(have) != want or len(set(have)) != len(have) or any(c > 1 for c in slots.values()):
                found.append(f"{svc.spec.annotations.name}: running slots {have}, want {want} distinct slots")
        elif svc.spec.HasField("global"):
            eligible = {n.id for n in nodes if n.status.state == READY_NODE and n.spec.availability == 0}
            if {t.node_id for t in running} != eligible or len(running) != len(eligible):
                found.append(f"{svc.spec.annotations.name}: global tasks on {len(running)} of {len(eligible)} nodes")
    drained = {n.id for n in nodes if n.spec.availability == DRAIN}
    found += [f"task {t.id} runs on drained node {node_name[t.node_id]}" for t in live if t.node_id in drained]

    # Every live node Ready.
    found += [
        f"node {n.description.hostname} is not Ready"
        for n in nodes
        if n.description.hostname in alive and n.status.state != READY_NODE
    ]

    # No container without its task, and no container running for a task that should not run.
    task_by_id = {t.id: t for t in tasks}
    for node in sorted(alive):
        for c in hosts.containers(node, all_states=True):
            task = task_by_id.get(c["Labels"]["minisw.task.id"])
            if task is None:
                found.append(f"container {c['Names'][0]} on {node} has no task")
            elif c["State"] == "running" and (task.desired_state != RUNNING or node_name.get(task.node_id) != node):
                found.append(f"container {c['Names'][0]} on {node} runs a task that should not run there")

    # All managers hold the same store.
    digests = {}
    for addr in hosts.manager_addrs():
        try:
            digests[addr] = hosts.info(addr).store_digest
        except Exception as err:  # a manager that does not answer is a finding too
            found.append(f"manager {addr} does not answer: {err}")
    if len(set(digests.values())) > 1:
        found.append(f"managers hold different stores: {digests}")
    return found


def settle(hosts: HostsCluster, ledger: Ledger | None = None, timeout: float = 90) -> float:
    """Wait until every invariant holds; return the seconds it took, or fail with what does not."""
    start = time.monotonic()
    last: list[str] = ["never checked"]
    while time.monotonic() - start < timeout:
        try:
            last = violations(hosts, ledger)
        except AssertionError as err:  # no manager answered
            last = [str(err)]
        if not last:
            return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(f"the cluster did not settle within {timeout}s: " + "; ".join(last[:10]))

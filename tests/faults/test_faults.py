"""The fault suite on separate hosts: each fault, then the invariants of ``tests/support/invariants.py``
once the cluster settles (every acknowledged write there, one task per slot, no stray container,
every live node Ready, all managers holding the same store).

The tests share one cluster and one ledger, in file order, each leaving every host up and connected.
"""

from __future__ import annotations

import os
import random
import signal
import time
import urllib.request

import pytest

from tests.support.cluster import poll_until
from tests.support.hosts import HostsCluster
from tests.support.invariants import Ledger, settle

pytestmark = [pytest.mark.docker, pytest.mark.slow]

WORKERS = ["worker1", "worker2"]
MANAGERS = ["manager1", "manager2", "manager3"]


def create(hosts: HostsCluster, ledger: Ledger, name: str, replicas: int, *flags: str) -> None:
    hosts.cli_ok("service", "create", "--detach", "--name", name, "--replicas", str(replicas),
                 "--restart-delay", "1s", *flags, "minisw/web:1")  # fmt: skip
    ledger.created(name, replicas, "minisw/web:1")


def new_leader(hosts: HostsCluster, old: str) -> str:
    return poll_until(lambda: (n := hosts.leader_node()) and n != old and n, 20, what="a new leader")  # type: ignore[no-any-return]


def test_kill_each_host_in_turn(hosts: HostsCluster, ledger: Ledger) -> None:
    create(hosts, ledger, "a", 5)
    settle(hosts, ledger)
    for node in [*WORKERS, *MANAGERS]:
        hosts.kill(node)
        names = hosts.node_names()

        def moved(gone: str = node, names: dict[str, str] = names) -> bool:
            running = hosts.running("a")
            return len(running) == 5 and all(names[t.node_id] != gone for t in running)

        poll_until(moved, 30, what=f"a's tasks off {node}")
        hosts.start(node)
        settle(hosts, ledger)


def test_kill_the_leader_host_during_a_rolling_update(hosts: HostsCluster, ledger: Ledger) -> None:
    create(hosts, ledger, "u", 6)
    settle(hosts, ledger)
    hosts.cli_ok("service", "update", "--detach", "--image", "minisw/web:2", "--update-delay", "1s", "u")
    ledger.updated("u", "minisw/web:2")
    time.sleep(2)
    old = hosts.leader_node()
    hosts.kill(old)
    new_leader(hosts, old)
    hosts.start(old)
    settle(hosts, ledger, timeout=120)
    images = {t.spec.container.image for t in hosts.running("u")}
    assert images == {"minisw/web:2"}


def test_partitioned_leader_stops_serving_and_rejoins_as_follower(hosts: HostsCluster, ledger: Ledger) -> None:
    old = hosts.leader_node()
    old_addr = hosts.process(old, "manager")["address"]
    others = [m for m in MANAGERS if m != old]
    hosts.partition([old], others)
    leader = new_leader(hosts, old)
    at = hosts.process(leader, "manager")["address"]
    create(hosts, ledger, "p", 2)  # acknowledged by the new leader's side
    hosts.cli_ok("service", "ls", at=at)
    # The old leader neither accepts writes nor serves reads that would miss the new write.
    refused = hosts.cli("service", "create", "--detach", "--name", "lost", "minisw/web:1", at=old_addr, timeout=30)
    assert refused.returncode != 0, refused.stdout
    read = hosts.cli("service", "ls", at=old_addr, timeout=30)
    assert read.returncode != 0 or " p " in read.stdout, read.stdout
    hosts.heal()
    settle(hosts, ledger)
    assert hosts.info(old_addr).leader_addr  # back in the cluster, following a leader (settle: same store)
    assert " lost " not in hosts.cli_ok("service", "ls")


def test_partitioned_worker_is_replaced_and_heals(hosts: HostsCluster, ledger: Ledger) -> None:
    names = hosts.node_names()
    hosts.partition(["worker1"], [n for n in [*MANAGERS, "worker2"]])
    poll_until(
        lambda: len(r := hosts.running("a")) == 5 and all(names[t.node_id] != "worker1" for t in r),
        30,
        what="a's tasks off worker1",
    )
    hosts.heal()
    settle(hosts, ledger)


def test_two_of_three_managers_lost_then_one_back(hosts: HostsCluster, ledger: Ledger) -> None:
    keep = hosts.leader_node()
    lost = [m for m in MANAGERS if m != keep]
    hosts.kill(lost[0])
    hosts.kill(lost[1])
    result = hosts.cli("service", "scale", "--detach", "a=4", timeout=30)
    assert result.returncode != 0
    assert "1 of 3" in result.stderr and "2" in result.stderr, result.stderr  # says how many are reachable
    # Running tasks keep running and answering on the hosts that live.
    for worker in WORKERS:
        running = [c for c in hosts.containers(worker) if c["Labels"].get("minisw.service.name") == "a"]
        for c in running:
            port = next(iter(c["Ports"]), {}).get("PublicPort")
            if port:
                with urllib.request.urlopen(f"http://{hosts.address(worker)}:{port}/", timeout=3) as response:
                    assert response.read().startswith(b"minisw/web:1")
    hosts.start(lost[0])
    poll_until(lambda: hosts.leader_node(), 30, what="a leader with 2 of 3 managers")
    hosts.cli_ok("service", "scale", "--detach", "a=4")
    ledger.scaled("a", 4)
    hosts.start(lost[1])
    settle(hosts, ledger, timeout=120)


def test_leader_paused_briefly_twenty_times_during_restarts_and_an_update(hosts: HostsCluster, ledger: Ledger) -> None:
    rng = random.Random(11)
    # A service whose containers keep exiting (restarts) and an update in progress.
    hosts.cli_ok("service", "create", "--detach", "--name", "flap", "--replicas", "2", "--restart-delay", "0s",
                 "minisw/web:1", "sh", "-c", "sleep 2; exit 1")  # fmt: skip
    hosts.cli_ok("service", "update", "--detach", "--image", "minisw/web:2", "--update-delay", "1s", "u")
    ledger.updated("u", "minisw/web:2")
    ledger.created("flap", 2, "minisw/web:1")
    for _ in range(20):
        leader = hosts.leader_node() or hosts.leader_node()
        pid = hosts.process(leader, "manager")["pid"] if leader else None
        if pid:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(rng.uniform(0.8, 1.4))
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.5)
    hosts.cli_ok("service", "rm", "flap")
    ledger.gone("flap")
    settle(hosts, ledger, timeout=120)


def test_leader_paused_twenty_seconds_replaces_no_task(hosts: HostsCluster, ledger: Ledger) -> None:
    settle(hosts, ledger)
    before = {t.slot: t.id for t in hosts.running("a")}
    leader = hosts.leader_node()
    pid = hosts.process(leader, "manager")["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        new_leader(hosts, leader)
        time.sleep(20)
    finally:
        os.kill(pid, signal.SIGCONT)
    settle(hosts, ledger)
    assert {t.slot: t.id for t in hosts.running("a")} == before


def test_restart_every_host_at_once(hosts: HostsCluster, ledger: Ledger) -> None:
    nodes = hosts.nodes()
    for node in nodes:
        hosts.kill(node)
    hosts.dev("up")  # boots every host again
    settle(hosts, ledger, timeout=120)

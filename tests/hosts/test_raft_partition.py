"""A leader cut off from the other managers by a partition (each manager a host of its own): once
a new leader has acknowledged a write, the old one refuses reads or serves them with that write,
never without it (the read barrier in manager/state/raft.py)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from minisw.proto import control_pb2 as api
from minisw.proto import control_pb2_grpc as api_grpc
from minisw.proto import objects_pb2 as pb
from tests.support.cluster import operator_channel, poll_until
from tests.support.hosts import HostsCluster

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@dataclass
class Reads:
    """Reads of ListServices from one manager: (started, ended, names or None if refused)."""

    samples: list[tuple[float, float, set[str] | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


def _spec(name: str) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(annotations=pb.Annotations(name=name))
    spec.task.container.image = "minisw/web:1"
    spec.replicated.replicas = 1
    return spec


def _read_forever(addr: str, hosts: HostsCluster, reads: Reads) -> None:
    with operator_channel(addr, hosts.tls_dir) as channel:
        stub = api_grpc.ControlStub(channel)
        while not reads.stop.is_set():
            started = time.monotonic()
            try:
                services = stub.ListServices(api.ListServicesRequest(), timeout=2).services
                names: set[str] | None = {s.spec.annotations.name for s in services}
            except Exception:  # refused (no quorum, not the leader any more) or timed out
                names = None
            reads.samples.append((started, time.monotonic(), names))
            time.sleep(0.01)


def test_a_partitioned_leader_never_serves_a_read_missing_an_acknowledged_write(settled: HostsCluster) -> None:
    hosts = settled
    managers = {r["name"]: r["address"] for r in hosts.status() if r["role"] == "manager"}
    leader = poll_until(hosts.leader_node, 30, what="a leader")
    others = [m for m in managers if m != leader]
    # The old leader must be a leader whose components are running: a read there works now.
    poll_until(lambda: hosts.cli("service", "ls", at=managers[leader]).returncode == 0, 30, what="reads")

    reads = Reads()
    reader = threading.Thread(target=_read_forever, args=(managers[leader], hosts, reads), daemon=True)
    reader.start()
    try:
        poll_until(lambda: len(reads.samples) > 5, 10, what="the reader to start")
        hosts.partition([leader], others)
        partitioned = time.monotonic()
        # The majority side elects a leader and acknowledges a write, as fast as a client can:
        # straight to the new leader (a follower may still forward to the old one for a while).
        acknowledged, attempts = None, []
        while acknowledged is None and time.monotonic() < partitioned + 30:
            for name in others:
                try:
                    with operator_channel(managers[name], hosts.tls_dir) as channel:
                        stub = api_grpc.ControlStub(channel)
                        if stub.Info(api.Empty(), timeout=0.3).leader_addr != managers[name]:
                            continue
                        stub.CreateService(api.CreateServiceRequest(spec=_spec("after-partition")), timeout=5)
                    acknowledged = time.monotonic()
                    break
                except Exception as err:  # no leader yet, or this one is not it
                    attempts.append(f"{time.monotonic() - partitioned:.2f}s {name}: {err}")
        assert acknowledged is not None, f"the majority side never acknowledged the write: {attempts[-3:]}"
        time.sleep(3)  # the old leader's window: it only steps down after 1.5 s without answers
    finally:
        reads.stop.set()
        reader.join(5)
        hosts.heal()

    after = [(s, e, names) for s, e, names in reads.samples if s > acknowledged]
    served = [names for _s, _e, names in after if names is not None]
    stale = [names for names in served if "after-partition" not in names]
    print(
        f"reads from the partitioned leader after the write was acknowledged {acknowledged - partitioned:.2f}s "
        f"after the partition: {len(after)}, served {len(served)}, stale {len(stale)}"
    )
    assert after, "no read of the old leader was made after the write was acknowledged"
    assert stale == [], f"{len(stale)} reads served without the acknowledged write"
    # And once healed, the old leader's manager (a follower now) serves the write.
    poll_until(
        lambda: "after-partition" in hosts.cli("service", "ls", at=managers[leader]).stdout, 30, what="reads after heal"
    )
    hosts.cli_ok("service", "rm", "after-partition")

"""Control-plane benchmarks on 3 managers; prints one JSON object. Every timed figure is the median
of ``--runs`` runs, with its spread (see ``figures.py``).

- ``store_and_raft_in_process``: the store and Raft alone, as a library, three Raft members in
  three processes, no gRPC, no TLS, no control API:
  - ``changes_per_second``: object changes committed per second with batching (Raft entries of
    200 changes each, 8 entries in flight); not a figure a user sees;
  - ``single_change_latency_ms_p50``/``_p99``: one-change transactions, one at a time;
  - ``without_fsync``: the same figures with the journal left unsynced (pysyncobj's default,
    not what minisw runs): what acknowledging only writes on disk costs.
- ``control_api_mtls``: what a user gets from three real ``minisw manager`` processes:
  - ``service_creates_per_second_1_client``/``_16_clients``: ``CreateService`` calls (one
    replica, no agents: each also makes the orchestrator create a task and the scheduler mark it
    pending) through gRPC with mutual TLS to the leader, from 1 client or from 16 concurrent
    clients, each with its own channel (connected before the clock starts);
  - ``failover_seconds``: ``kill -9`` of the leader to the next successful ``CreateService``
    through a survivor.

Run: ``python bench/bench_control_plane.py`` (about a minute; ``--creates 50 --runs 1`` to try it).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from bench.figures import figure, runs_parser
from minisw.manager.state.raft import RaftNode
from minisw.manager.state.store import MAX_CHANGES_PER_TRANSACTION, MemoryStore
from minisw.proto import control_pb2 as api
from minisw.proto import control_pb2_grpc as api_grpc
from minisw.proto import objects_pb2 as pb
from tests.support.cluster import Cluster, ManagerProc, poll_until

ADDRS = ["127.55.0.1:17101", "127.55.0.2:17102", "127.55.0.3:17103"]
CHANGES, IN_FLIGHT, LATENCY_SAMPLES = 40_000, 8, 500
CONCURRENT_CLIENTS = 16


# ---- the store and Raft, in-process -----------------------------------------------------------
def _follower(addr: str, data_dir: str, stop: Any, durable: bool) -> None:
    async def run() -> None:
        store = MemoryStore()
        raft = RaftNode(
            store,
            self_addr=addr,
            peers=[a for a in ADDRS if a != addr],
            data_dir=data_dir,
            secret="bench",
            on_state_change=lambda: None,
            durable=durable,
        )
        store.set_proposer(raft)
        raft.start()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        raft.stop()

    asyncio.run(run())


async def _store_and_raft(tmp: str, durable: bool) -> dict[str, float]:
    stop = multiprocessing.Event()
    followers = [
        multiprocessing.Process(target=_follower, args=(a, f"{tmp}/{i}", stop, durable))
        for i, a in enumerate(ADDRS[1:], 1)
    ]
    for p in followers:
        p.start()
    store = MemoryStore()
    # The first member gets a head start so it is the leader we measure from.
    raft = RaftNode(
        store,
        self_addr=ADDRS[0],
        peers=ADDRS[1:],
        data_dir=f"{tmp}/0",
        secret="bench",
        on_state_change=lambda: None,
        durable=durable,
    )
    store.set_proposer(raft)
    raft.start()
    try:
        while not raft.status().is_leader:
            await asyncio.sleep(0.01)
            if raft.status().leader not in (None, ADDRS[0]):
                return {}  # another member won the election: the caller tries again
        while raft.status().reachable < 3:
            await asyncio.sleep(0.01)
        raft.begin_term(raft.status().term)  # what the leadership loop does: writes are fenced to it
        latencies = []
        for i in range(LATENCY_SAMPLES):
            t0 = time.perf_counter()
            await store.update(lambda tx, i=i: tx.create(pb.Node(id=f"lat{i}")))
            latencies.append((time.perf_counter() - t0) * 1000)

        async def writer(w: int) -> None:
            for b in range(CHANGES // IN_FLIGHT // MAX_CHANGES_PER_TRANSACTION):
                await store.update(
                    lambda tx, b=b: [
                        tx.create(pb.Task(id=f"w{w}-{b}-{k}", service_id="bench", slot=k))
                        for k in range(MAX_CHANGES_PER_TRANSACTION)
                    ]
                )

        t0 = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(IN_FLIGHT)))
        elapsed = time.perf_counter() - t0
        latencies.sort()
        return {
            "changes_per_second": CHANGES / elapsed,
            "single_change_latency_ms_p50": statistics.median(latencies),
            "single_change_latency_ms_p99": latencies[int(len(latencies) * 0.99)],
        }
    finally:
        raft.stop()
        stop.set()
        for p in followers:
            p.join(10)


def _store_and_raft_run(tmp: str, durable: bool = True) -> dict[str, float]:
    for attempt in range(10):
        figures = asyncio.run(_store_and_raft(f"{tmp}/attempt{attempt}", durable))
        if figures:
            return figures
    raise RuntimeError("the first Raft member never won an election in 10 attempts")


# ---- the control API, as a user gets it -------------------------------------------------------
def _spec(name: str) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(annotations=pb.Annotations(name=name))
    spec.task.container.image = "minisw/web:1"
    spec.replicated.replicas = 1
    return spec


def _creates_per_second(leader: ManagerProc, prefix: str, clients: int, creates: int) -> float:
    """``creates`` CreateService calls spread over ``clients`` threads, each on its own channel."""
    channels = [leader.stub_channel() for _ in range(clients)]
    try:
        stubs = [api_grpc.ControlStub(ch) for ch in channels]
        for stub in stubs:  # TLS handshakes happen here, before the clock starts
            stub.Info(api.Empty(), timeout=10)
        per_client = creates // clients
        errors: list[BaseException] = []

        def client(n: int) -> None:
            try:
                for i in range(per_client):
                    stubs[n].CreateService(api.CreateServiceRequest(spec=_spec(f"{prefix}-{n}-{i}")), timeout=10)
            except BaseException as err:  # surfaced below
                errors.append(err)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise errors[0]
        return per_client * clients / elapsed
    finally:
        for ch in channels:
            ch.close()


def _failover(c: Cluster) -> float:
    leader = c.leader()
    survivors = [m for m in c.managers if m is not leader]
    t0 = time.monotonic()
    leader.kill()

    def write() -> bool:
        for m in survivors:
            try:
                with m.stub_channel() as ch:
                    api_grpc.ControlStub(ch).CreateService(api.CreateServiceRequest(spec=_spec("after")), timeout=2)
                return True
            except grpc.RpcError:
                continue
        return False

    poll_until(write, 30, interval=0.02, what="a write after failover")
    return time.monotonic() - t0


def _control_api_run(tmp: str, creates: int) -> dict[str, float]:
    c = Cluster(Path(tmp))
    c.root.mkdir(parents=True)
    try:
        c.start_managers(3)
        leader = c.leader()
        one = _creates_per_second(leader, "one", 1, creates)
        many = _creates_per_second(leader, "many", CONCURRENT_CLIENTS, creates)
        return {
            "service_creates_per_second_1_client": one,
            f"service_creates_per_second_{CONCURRENT_CLIENTS}_clients": many,
            "failover_seconds": _failover(c),
        }
    finally:
        c.teardown()


def main() -> None:
    parser = runs_parser(__doc__ or "")
    parser.add_argument("--creates", type=int, default=400, help="CreateService calls per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raft_runs = [_store_and_raft_run(f"{tmp}/raft{i}") for i in range(args.runs)]
        unsynced_runs = [_store_and_raft_run(f"{tmp}/unsynced{i}", durable=False) for i in range(args.runs)]
        api_runs = [_control_api_run(f"{tmp}/api{i}", args.creates) for i in range(args.runs)]
    out = {
        "store_and_raft_in_process": {
            "changes_per_entry": MAX_CHANGES_PER_TRANSACTION,
            "entries_in_flight": IN_FLIGHT,
            **{key: figure((r[key] for r in raft_runs), 2) for key in raft_runs[0]},
            # The same without syncing the journal to disk (pysyncobj's own behaviour): the price of
            # acknowledging a write only once it is on disk on a quorum.
            "without_fsync": {key: figure((r[key] for r in unsynced_runs), 2) for key in unsynced_runs[0]},
        },
        "control_api_mtls": {
            "creates_per_measurement": args.creates // CONCURRENT_CLIENTS * CONCURRENT_CLIENTS,
            **{key: figure((r[key] for r in api_runs), 2) for key in api_runs[0]},
        },
        "targets": {
            "store_and_raft_in_process.changes_per_second": ">= 5000",
            "store_and_raft_in_process.single_change_latency_ms_p50": "<= 10",
            "control_api_mtls.failover_seconds": "<= 2",
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

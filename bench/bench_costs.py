"""What the leader's components cost per change, in one process (no Raft, no gRPC, no agents).

Issue #13 asks that the manager's costs follow what changed rather than the cluster's size. Each
scenario loads a store of ``--nodes`` READY nodes and ``--tasks`` RUNNING tasks (10 services),
starts one component on it and measures the process's CPU seconds (``time.process_time``: this
process does nothing else) for one kind of change or for a stretch of idle time:

- ``assignment_stream_cpu_ms_per_change``: one assignment stream per node is open (the
  dispatcher's ``assignments``, without gRPC); one task's spec changes; CPU until its node's
  stream has sent it. Every stream used to receive every store event.
- ``store_fanout_cpu_ms_per_change``: the same fan-out measured on the store alone: one watcher
  per node, draining its queue; one task changes. ``all_events``: every watcher gets every event
  (the old way, ``store.watch()``); ``keyed``: each watcher subscribes to its node's tasks.
- ``scheduler_cpu_ms_per_round``: 10 new tasks are created; CPU until all are ASSIGNED.
- ``scheduler_idle_cpu_percent``: one task that fits no node stays PENDING; the scheduler's CPU
  over ``--idle`` seconds of nothing happening (it used to copy every task every second).
- ``restart_timers_idle_cpu_percent``: 1,000 delayed starts wait for old tasks that keep
  running; CPU over ``--idle`` seconds (each used to poll its old task every 100 ms).
- ``updater_idle_cpu_percent``: an update of 1,000 slots at once whose new tasks are not placed
  yet; CPU over ``--idle`` seconds (it used to poll each new task every 100 ms, twice).
- ``reaper_cpu_ms_per_change``: one task's status changes; CPU of the reaper's next look.
  ``reaper_max_lock_ms``: the longest hold of the store's lock over those looks (Raft's thread
  waits that long to apply an entry: held too long, the leader misses heartbeats and loses office).
- ``update_start_cpu_ms_per_slot`` / ``update_start_max_lock_ms``: an update of 1,000 slots of
  one service starts (each slot's first write reads its slot's tasks under the lock); CPU per slot
  until every slot has its new task, and the longest hold of the store's lock meanwhile.
- ``session_streams_idle_cpu_percent``: one agent session stream per node is open (the real
  ``DispatcherServer.Session``, without the network); CPU over ``--idle`` seconds of nothing
  happening (each stream used to rebuild its message every second from a copy of every node).

Each figure is the median of ``--runs`` runs. ``--code DIR`` measures another checkout instead
of the installed one (a tree with ``minisw/{proto,manager,...}``, e.g. ``git archive`` of the
commit before, linked that way): that is how the "before" figures are taken.

Run: ``python bench/bench_costs.py`` (about 2 minutes; ``--nodes 100 --tasks 1000 --runs 1`` to try it).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import figure, runs_parser

SERVICES = 10
CHANGES = 20


def _use_code(tree: str) -> None:
    """Import ``minisw`` from ``tree`` rather than from the editable install."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, tree)
    for name in [m for m in sys.modules if m == "minisw" or m.startswith("minisw.")]:
        del sys.modules[name]


class _Fixture:
    """Imports made after ``--code`` took effect, and a loaded store."""

    def __init__(self) -> None:
        from minisw.manager.state import store
        from minisw.proto import objects_pb2

        self.pb: Any = objects_pb2
        self.store_module: Any = store

    async def loaded(self, nodes: int, tasks: int) -> Any:
        pb = self.pb
        store = self.store_module.MemoryStore()

        def load(tx: Any) -> None:
            for i in range(nodes):
                n = pb.Node(id=f"node{i:04d}")
                n.status.state = pb.NodeStatus.READY
                n.status.addr = f"10.0.{i // 250}.{i % 250 + 1}"
                n.description.resources.nano_cpus = 8 * 10**9
                n.description.resources.memory_bytes = 16 * 1024**3
                tx.create(n)
            for s in range(SERVICES):
                svc = pb.Service(id=f"svc{s}")
                svc.spec.annotations.name = f"web{s}"
                svc.spec.replicated.replicas = tasks // SERVICES
                svc.spec.task.container.image = "minisw/web:1"
                tx.create(svc)
            for i in range(tasks):
                t = pb.Task(id=f"task{i:05d}", service_id=f"svc{i % SERVICES}", slot=i // SERVICES + 1)
                t.node_id = f"node{i % nodes:04d}"
                t.desired_state = pb.RUNNING
                t.spec.container.image = "minisw/web:1"
                t.spec.resources.reservations.nano_cpus = 10**7
                t.status.state = pb.RUNNING
                tx.create(t)

        await store.update(load)
        return store

    async def change_task(self, store: Any, task_id: str, change: Callable[[Any], None]) -> None:
        def fn(tx: Any) -> None:
            task = tx.get_task(task_id)
            change(task)
            tx.update(task)

        await store.update(fn)


async def _cpu(action: Callable[[], Awaitable[None]]) -> float:
    t0 = time.process_time()
    await action()
    return time.process_time() - t0


async def _idle_percent(seconds: float) -> float:
    t0, w0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    return 100 * (time.process_time() - t0) / (time.monotonic() - w0)


class _TimedLock:
    """The store's RLock, recording how long each outermost hold lasted."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self._since = 0.0
        self.longest = 0.0

    def __enter__(self) -> bool:
        self._lock.acquire()
        self._depth += 1
        if self._depth == 1:
            self._since = time.perf_counter()
        return True

    def __exit__(self, *_: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.longest = max(self.longest, time.perf_counter() - self._since)
        self._lock.release()


def _time_lock(store: Any) -> _TimedLock:
    lock = _TimedLock()
    store._lock = lock
    return lock


async def _stop(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.01)  # what they cancelled in turn finishes too


# ---- scenarios ------------------------------------------------------------------------------
async def assignment_streams(fx: _Fixture, nodes: int, tasks: int) -> float:
    from minisw.manager.dispatcher import dispatcher as d

    pb = fx.pb
    store = await fx.loaded(nodes, tasks)

    class Manager:
        node_id = "manager"
        authorizer = None

        def leader_control_addr(self) -> str | None:
            return None

        def manager_addrs(self) -> list[tuple[str, str]]:
            return []

    dispatcher = d.Dispatcher(store, Manager(), 1.0)
    background: list[asyncio.Task[Any]] = []
    if hasattr(dispatcher, "views"):  # the network view, computed once per dispatcher
        background.append(asyncio.create_task(dispatcher.views.run()))
    received = {f"node{i:04d}": asyncio.Event() for i in range(nodes)}

    async def stream(node_id: str) -> None:
        session = d._Session(node_id, "session", time.monotonic() + 10**6)
        async with contextlib.aclosing(dispatcher.assignments(session)) as messages:
            async for _ in messages:
                received[node_id].set()

    background += [asyncio.create_task(stream(n)) for n in received]
    for event in received.values():
        await event.wait()
    await asyncio.sleep(0.5)  # let the first messages settle
    total = 0.0
    for i in range(CHANGES):
        task_id = f"task{i * 37 % tasks:05d}"
        node_id = f"node{i * 37 % tasks % nodes:04d}"
        received[node_id].clear()

        async def change_and_wait(task_id: str = task_id, node_id: str = node_id, i: int = i) -> None:
            await fx.change_task(store, task_id, lambda t: t.spec.container.env.append(f"CHANGE={i}"))
            await received[node_id].wait()

        total += await _cpu(change_and_wait)
        await asyncio.sleep(0.05)  # every stream is done with it (its debounce) before the next
    await _stop(background)
    del pb
    return 1000 * total / CHANGES


async def store_fanout(fx: _Fixture, nodes: int, tasks: int, keyed: bool) -> float:
    store = await fx.loaded(nodes, tasks)
    got = {f"node{i:04d}": asyncio.Event() for i in range(nodes)}

    async def watcher(node_id: str, ready: asyncio.Event) -> None:
        watch = store.watch([("task-node", node_id)]) if keyed else store.watch()
        async with watch as queue:
            ready.set()
            while True:
                item = await queue.get()
                event = getattr(item, "obj", None)
                if event is not None and getattr(event, "node_id", "") == node_id:
                    got[node_id].set()

    readies = [asyncio.Event() for _ in got]
    background = [asyncio.create_task(watcher(n, r)) for n, r in zip(got, readies, strict=True)]
    for ready in readies:
        await ready.wait()
    total = 0.0
    for i in range(CHANGES):
        task_id = f"task{i * 37 % tasks:05d}"
        node_id = f"node{i * 37 % tasks % nodes:04d}"
        got[node_id].clear()

        async def change_and_wait(task_id: str = task_id, node_id: str = node_id, i: int = i) -> None:
            await fx.change_task(store, task_id, lambda t: t.spec.container.env.append(f"CHANGE={i}"))
            await got[node_id].wait()
            await asyncio.sleep(0)  # the other watchers drain the same commit
            await asyncio.sleep(0)

        total += await _cpu(change_and_wait)
    await _stop(background)
    return 1000 * total / CHANGES


async def scheduler(fx: _Fixture, nodes: int, tasks: int, idle: float) -> tuple[float, float]:
    from minisw.manager.scheduler.scheduler import Scheduler

    pb = fx.pb
    store = await fx.loaded(nodes, tasks)
    background = [asyncio.create_task(Scheduler(store).run())]
    await asyncio.sleep(0.3)
    rounds = []
    for r in range(5):
        ids = [f"new{r}-{i}" for i in range(10)]

        async def create_and_wait(ids: list[str] = ids) -> None:
            async with store.watch() as queue:

                def create(tx: Any) -> None:
                    for i, task_id in enumerate(ids):
                        t = pb.Task(id=task_id, service_id="svc0", slot=10_000 + i, desired_state=pb.RUNNING)
                        t.spec.container.image = "minisw/web:1"
                        t.status.state = pb.NEW
                        tx.create(t)

                await store.update(create)
                while True:
                    await queue.get()
                    if store.view(lambda tx: all(tx.get_task(i).status.state == pb.ASSIGNED for i in ids)):
                        return

        rounds.append(await _cpu(create_and_wait))
    rounds.sort()

    def unplaceable(tx: Any) -> None:
        t = pb.Task(id="nowhere", service_id="svc1", slot=99_999, desired_state=pb.RUNNING)
        t.spec.placement.constraints.append("node.labels.zone==none")
        t.status.state = pb.NEW
        tx.create(t)

    await store.update(unplaceable)
    await asyncio.sleep(0.5)
    idle_percent = await _idle_percent(idle)
    await _stop(background)
    return 1000 * rounds[len(rounds) // 2], idle_percent


async def restart_timers(fx: _Fixture, nodes: int, tasks: int, idle: float, waiting: int) -> float:
    from minisw.manager.orchestrator.restart import RestartSupervisor

    pb = fx.pb
    store = await fx.loaded(nodes, tasks)

    def replacements(tx: Any) -> None:
        for i in range(waiting):
            t = pb.Task(id=f"repl{i:05d}", service_id=f"svc{i % SERVICES}", slot=i // SERVICES + 1)
            t.desired_state = pb.READY
            t.status.state = pb.NEW
            tx.create(t)

    await store.update(replacements)
    restarts = RestartSupervisor(store)
    for i in range(waiting):
        restarts.delay_start(f"repl{i:05d}", 0.0, f"task{i:05d}")  # the old task keeps running
    await asyncio.sleep(0.5)
    percent = await _idle_percent(idle)
    restarts.close()
    return percent


async def updater(fx: _Fixture, nodes: int, tasks: int, idle: float, slots: int) -> float:
    from minisw.manager.orchestrator.restart import RestartSupervisor
    from minisw.manager.orchestrator.update import Updater

    pb = fx.pb
    store = await fx.loaded(nodes, tasks)
    service = store.view(lambda tx: tx.get_service("svc0"))
    service.spec.task.container.image = "minisw/web:2"
    service.spec_version.index = 2
    service.spec.update.parallelism = 0  # every slot at once
    service.spec.update.monitor.seconds = 600
    service.spec.update.order = pb.UpdateConfig.START_FIRST  # new tasks desired RUNNING at once

    def write(tx: Any) -> None:
        tx.update(service)

    await store.update(write)
    service = store.view(lambda tx: tx.get_service("svc0"))
    own = sorted(store.view(lambda tx: tx.tasks_by_service("svc0")), key=lambda t: t.slot)[:slots]
    dirty = {t.slot: [t] for t in own}
    restarts = RestartSupervisor(store)
    background = [asyncio.create_task(Updater(store, restarts, service, dirty).run())]
    await asyncio.sleep(1.0)  # every slot has its new task, which no scheduler places
    percent = await _idle_percent(idle)
    await _stop(background)
    restarts.close()
    return percent


async def reaper(fx: _Fixture, nodes: int, tasks: int) -> tuple[float, float]:
    from minisw.manager.orchestrator.reaper import TICK, TaskReaper

    pb = fx.pb
    store = await fx.loaded(nodes, tasks)
    background = [asyncio.create_task(TaskReaper(store).run())]
    await asyncio.sleep(0.5)
    gc.collect()  # the earlier scenarios' garbage is not this one's lock hold
    lock = _time_lock(store)
    total = 0.0
    for i in range(CHANGES):
        task_id = f"task{i * 37 % tasks:05d}"

        async def change_and_look(task_id: str = task_id, i: int = i) -> None:
            await fx.change_task(store, task_id, lambda t: setattr(t.status, "message", f"change {i}"))
            await asyncio.sleep(TICK + 0.05)

        total += await _cpu(change_and_look)
    await _stop(background)
    del pb
    return 1000 * total / CHANGES, 1000 * lock.longest


async def update_start(fx: _Fixture, nodes: int, tasks: int, slots: int) -> tuple[float, float]:
    from minisw.manager.orchestrator.restart import RestartSupervisor
    from minisw.manager.orchestrator.update import Updater

    pb = fx.pb
    store = await fx.loaded(nodes, tasks)
    service = store.view(lambda tx: tx.get_service("svc0"))
    service.spec.task.container.image = "minisw/web:2"
    service.spec_version.index = 2
    service.spec.update.parallelism = 0  # every slot at once
    service.spec.update.monitor.seconds = 600
    service.spec.update.order = pb.UpdateConfig.START_FIRST

    def write(tx: Any) -> None:
        tx.update(service)

    await store.update(write)
    service = store.view(lambda tx: tx.get_service("svc0"))
    own = sorted(store.view(lambda tx: tx.tasks_by_service("svc0")), key=lambda t: t.slot)[:slots]
    dirty = {t.slot: [t] for t in own}
    restarts = RestartSupervisor(store)
    gc.collect()  # the earlier scenarios' garbage is not this one's lock hold
    lock = _time_lock(store)
    background: list[asyncio.Task[Any]] = []
    want = store.view(lambda tx: tx.count("task")) + len(dirty)

    async def start() -> None:
        background.append(asyncio.create_task(Updater(store, restarts, service, dirty).run()))
        while store.view(lambda tx: tx.count("task")) < want:
            await asyncio.sleep(0.005)

    cpu = await _cpu(start)
    await _stop(background)
    restarts.close()
    return 1000 * cpu / len(dirty), 1000 * lock.longest


async def session_streams(fx: _Fixture, nodes: int, tasks: int, idle: float) -> float:
    """Every node's session stream through ``DispatcherServer.Session``, with 3 managers."""
    from types import SimpleNamespace

    from minisw.manager.dispatcher import dispatcher as d
    from minisw.proto import dispatcher_pb2 as dpb

    pb = fx.pb
    store = await fx.loaded(nodes, tasks)
    indexed = hasattr(fx.store_module.ReadTx, "manager_addrs")

    def setup(tx: Any) -> None:
        cluster = pb.Cluster(id="cluster")
        cluster.join_tokens.worker = "token"
        tx.create(cluster)
        for i in range(3):
            node = tx.get_node(f"node{i:04d}")
            node.role = pb.MANAGER
            node.manager_status.addr = f"10.0.0.{i + 1}:4242"
            tx.update(node)

    await store.update(setup)

    class Manager:
        """ManagerNode's manager_addrs, as the measured tree has it."""

        node_id = "manager"
        authorizer = SimpleNamespace(require=lambda *_: SimpleNamespace(node_id="insecure"))

        def leader_control_addr(self) -> str | None:
            return None

        def manager_addrs(self) -> list[tuple[str, str]]:
            if indexed:
                return store.view(lambda tx: tx.manager_addrs())  # type: ignore[no-any-return]
            found = store.view(lambda tx: tx.nodes())
            return [(n.id, n.manager_status.addr) for n in found if n.role == pb.MANAGER and n.manager_status.addr]

    class Context:
        def peer(self) -> str:
            return ""

        async def abort(self, code: Any, message: str) -> None:
            raise RuntimeError(f"{code}: {message}")

    dispatcher = d.Dispatcher(store, Manager(), 1000.0)  # type: ignore[arg-type]  # no heartbeats: nobody expires
    server = d.DispatcherServer(Manager())  # type: ignore[arg-type]
    server.current = dispatcher
    background: list[asyncio.Task[Any]] = [asyncio.create_task(dispatcher.run())]
    opened = asyncio.Semaphore(0)

    async def stream(node_id: str) -> None:
        request = dpb.SessionRequest(node_id=node_id, token="token")
        async for _ in server.Session(request, Context()):
            opened.release()

    background += [asyncio.create_task(stream(f"node{i:04d}")) for i in range(nodes)]
    for _ in range(nodes):
        await opened.acquire()
    await asyncio.sleep(1.5)  # past the registrations' writes
    percent = await _idle_percent(idle)
    await _stop(background)
    return percent


async def _run(args: Any) -> dict[str, Any]:
    fx = _Fixture()
    n, t = args.nodes, args.tasks
    sched_round, sched_idle = await scheduler(fx, n, t, args.idle)
    reaper_cpu, reaper_lock = await reaper(fx, n, t)
    update_cpu, update_lock = await update_start(fx, n, t, min(1000, t // SERVICES))
    return {
        "assignment_stream_cpu_ms_per_change": await assignment_streams(fx, n, t),
        "store_fanout_all_events_cpu_ms_per_change": await store_fanout(fx, n, t, keyed=False),
        "store_fanout_keyed_cpu_ms_per_change": (
            await store_fanout(fx, n, t, keyed=True) if hasattr(fx.store_module, "watch_keys") else None
        ),
        "scheduler_cpu_ms_per_round": sched_round,
        "scheduler_idle_cpu_percent": sched_idle,
        "restart_timers_idle_cpu_percent": await restart_timers(fx, n, t, args.idle, min(1000, t)),
        "updater_idle_cpu_percent": await updater(fx, n, t, args.idle, min(1000, t // SERVICES)),
        "reaper_cpu_ms_per_change": reaper_cpu,
        "reaper_max_lock_ms": reaper_lock,
        "update_start_cpu_ms_per_slot": update_cpu,
        "update_start_max_lock_ms": update_lock,
        "session_streams_idle_cpu_percent": await session_streams(fx, n, t, args.idle),
    }


def main() -> None:
    parser = runs_parser(__doc__ or "")
    parser.add_argument("--nodes", type=int, default=1_000)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle time measured")
    parser.add_argument("--code", help="measure this tree's minisw instead of the installed one")
    args = parser.parse_args()
    if args.code:
        _use_code(args.code)
    runs = [asyncio.run(_run(args)) for _ in range(args.runs)]
    out: dict[str, Any] = {"nodes": args.nodes, "tasks": args.tasks, "code": args.code or "installed"}
    for key in runs[0]:
        samples = [r[key] for r in runs if r[key] is not None]
        out[key] = figure(samples) if samples else None
    print(json.dumps(out))


if __name__ == "__main__":
    main()

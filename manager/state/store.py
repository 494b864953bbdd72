"""MemoryStore: the cluster's desired and observed state, the spine every component hangs on.

Reads run against the applied state under a short lock. Writes are built in a ``WriteTx`` (a
synchronous callback: never await inside it); the callers waiting while one entry commits share
the next ``Transaction`` handed to the proposer (Raft), as ``update`` explains. Every replica then
runs ``apply_entry`` with the same bytes and the same Raft index, so the checks made there
(existence, case-insensitive names, versions) give the same verdict everywhere. With no proposer
(unit tests, benchmarks of pure logic) entries apply at once.

A callback may run more than once (when another caller in its entry changes one of its objects,
or its entry is refused as a whole), so it must not act beyond its transaction: whatever else it
wants done (start a timer or an updater, count something) it registers with ``tx.after_commit``,
and that runs once, after the commit.

``apply_entry`` is called from the Raft library's thread; watchers live on the asyncio loop and
get events through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from minisw.manager.errors import (
    AlreadyExists,
    ManagerError,
    NameConflict,
    NotFound,
    SequenceConflict,
)
from minisw.proto import objects_pb2 as pb

__all__ = [
    "ANY_NODE",
    "MAX_CHANGES_PER_TRANSACTION",
    "Commit",
    "Event",
    "MemoryStore",
    "Object",
    "Proposer",
    "ReadTx",
    "WatchKey",
    "WriteTx",
    "watch_keys",
]

Object = pb.Service | pb.Task | pb.Node | pb.Cluster | pb.Network
T = TypeVar("T")
K = TypeVar("K")
Effect = Callable[[], None]

log = logging.getLogger(__name__)

# swarmkit caps a batch's transactions at 200 changes; a Raft entry stays small that way.
MAX_CHANGES_PER_TRANSACTION = 200
MAX_CALLERS_PER_ENTRY = MAX_CHANGES_PER_TRANSACTION  # callers whose writes share one entry, at most

_TABLE_OF = {pb.Service: "service", pb.Task: "task", pb.Node: "node", pb.Cluster: "cluster", pb.Network: "network"}
_FIELD_OF_TABLE = {"service": "service", "task": "task", "node": "node", "cluster": "cluster", "network": "network"}

# Error strings travel through Raft as apply results; they map back to exceptions here.
_ERRORS: dict[str, Callable[[str], ManagerError]] = {
    "sequence": lambda _m: SequenceConflict(),
    "exists": AlreadyExists,
    "name": NameConflict,
    "notfound": NotFound,
}


class Proposer(Protocol):
    """What the store needs from Raft: commit these bytes and tell me how applying them went."""

    async def propose(self, entry: bytes) -> str:
        """Return the apply result ("" on success, else "kind:message")."""
        ...


@dataclass(frozen=True, slots=True)
class Event:
    """One change inside a committed transaction."""

    action: str  # "create" | "update" | "delete"
    table: str  # "service" | "task" | "node" | "cluster"
    obj: Object  # the new object (the old one for delete)
    old: Object | None = None


@dataclass(frozen=True, slots=True)
class Commit:
    """Marks the end of one transaction's events."""

    index: int


WatchItem = Event | Commit

# What a keyed watcher subscribes to: ("task", id), ("task-node", node id), ("task-service",
# service id), ("node", id), ("service", id), ANY_NODE (every node event). See ``watch_keys``.
WatchKey = tuple[str, str]
ANY_NODE: WatchKey = ("node-any", "")

# A task's slot within its service: its number for replicated services, its node for global ones
# (slot 0; "" while unassigned). The reaper's history and an update's unit of work.
SlotKey = int | str


def slot_key(task: pb.Task) -> SlotKey:
    return task.slot or task.node_id


def watch_keys(event: Event) -> set[WatchKey]:
    """The keys an event matches. A task matches the node it is on and the one it was on."""
    obj = event.obj
    if isinstance(obj, pb.Task):
        keys = {("task", obj.id), ("task-service", obj.service_id)}
        if obj.node_id:
            keys.add(("task-node", obj.node_id))
        if isinstance(event.old, pb.Task) and event.old.node_id:
            keys.add(("task-node", event.old.node_id))
        return keys
    if isinstance(obj, pb.Node):
        return {("node", obj.id), ANY_NODE}
    return {(event.table, obj.id)}


@dataclass(eq=False, slots=True)
class _KeyedWatcher:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[WatchItem]
    keys: frozenset[WatchKey]


def table_of(obj: Object) -> str:
    return _TABLE_OF[type(obj)]


class _Tables:
    """The applied state with the indexes components need. Guarded by MemoryStore._lock."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Object]] = {t: {} for t in _FIELD_OF_TABLE}
        self.service_by_name: dict[str, str] = {}
        self.network_by_name: dict[str, str] = {}
        self.tasks_by_service: dict[str, set[str]] = defaultdict(set)
        self.tasks_by_node: dict[str, set[str]] = defaultdict(set)
        # (service id, slot key) -> task ids: an update's slot or the reaper's history without
        # a look at the service's other tasks (copying them all under the lock starves Raft).
        self.tasks_by_slot: dict[tuple[str, SlotKey], set[str]] = defaultdict(set)
        self.managers: set[str] = set()  # node ids whose role is MANAGER

    def put(self, table: str, obj: Object) -> None:
        self.drop(table, obj.id)
        self.objects[table][obj.id] = obj
        if isinstance(obj, pb.Service):
            self.service_by_name[obj.spec.annotations.name.lower()] = obj.id
        elif isinstance(obj, pb.Network):
            self.network_by_name[obj.spec.annotations.name] = obj.id
        elif isinstance(obj, pb.Task):
            self.tasks_by_service[obj.service_id].add(obj.id)
            self.tasks_by_slot[(obj.service_id, slot_key(obj))].add(obj.id)
            if obj.node_id:
                self.tasks_by_node[obj.node_id].add(obj.id)
        elif isinstance(obj, pb.Node) and obj.role == pb.MANAGER:
            self.managers.add(obj.id)

    def drop(self, table: str, obj_id: str) -> None:
        old = self.objects[table].pop(obj_id, None)
        if isinstance(old, pb.Service):
            self.service_by_name.pop(old.spec.annotations.name.lower(), None)
        elif isinstance(old, pb.Network):
            self.network_by_name.pop(old.spec.annotations.name, None)
        elif isinstance(old, pb.Task):
            _discard(self.tasks_by_service, old.service_id, old.id)
            _discard(self.tasks_by_slot, (old.service_id, slot_key(old)), old.id)
            if old.node_id:
                _discard(self.tasks_by_node, old.node_id, old.id)
        elif isinstance(old, pb.Node):
            self.managers.discard(old.id)


def _discard(index: dict[K, set[str]], key: K, value: str) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(value)
        if not members:
            del index[key]


class ReadTx:
    """A read view. Objects handed out are copies: mutate them freely, then write them back."""

    def __init__(self, tables: _Tables) -> None:
        self._t = tables

    def _get(self, table: str, obj_id: str) -> Object | None:
        obj = self._t.objects[table].get(obj_id)
        return _copy(obj) if obj is not None else None

    def _all(self, table: str) -> list[Object]:
        return [_copy(o) for o in self._t.objects[table].values()]

    def get_service(self, service_id: str) -> pb.Service | None:
        return self._get("service", service_id)  # type: ignore[return-value]

    def get_task(self, task_id: str) -> pb.Task | None:
        return self._get("task", task_id)  # type: ignore[return-value]

    def get_node(self, node_id: str) -> pb.Node | None:
        return self._get("node", node_id)  # type: ignore[return-value]

    def get_cluster(self) -> pb.Cluster | None:
        clusters = self._all("cluster")
        return clusters[0] if clusters else None  # type: ignore[return-value]

    def services(self) -> list[pb.Service]:
        return self._all("service")  # type: ignore[return-value]

    def tasks(self) -> list[pb.Task]:
        return self._all("task")  # type: ignore[return-value]

    def nodes(self) -> list[pb.Node]:
        return self._all("node")  # type: ignore[return-value]

    def get_network(self, network_id: str) -> pb.Network | None:
        return self._get("network", network_id)  # type: ignore[return-value]

    def networks(self) -> list[pb.Network]:
        return self._all("network")  # type: ignore[return-value]

    def network_by_name(self, name: str) -> pb.Network | None:
        network_id = self._t.network_by_name.get(name)
        return self.get_network(network_id) if network_id else None

    def network_slices(self) -> set[int]:
        """The network slices nodes hold (read in place: no copies of every node)."""
        return {n.network_slice for n in self._t.objects["node"].values() if isinstance(n, pb.Node)}

    def service_by_name(self, name: str) -> pb.Service | None:
        service_id = self._t.service_by_name.get(name.lower())
        return self.get_service(service_id) if service_id else None

    def tasks_by_service(self, service_id: str) -> list[pb.Task]:
        ids = self._t.tasks_by_service.get(service_id, ())
        return [t for t in (self.get_task(i) for i in ids) if t is not None]

    def tasks_by_node(self, node_id: str) -> list[pb.Task]:
        ids = self._t.tasks_by_node.get(node_id, ())
        return [t for t in (self.get_task(i) for i in ids) if t is not None]

    def tasks_in_slot(self, service_id: str, slot: SlotKey) -> list[pb.Task]:
        """The tasks of one slot (see ``slot_key``): copies of those only, not of the service's."""
        ids = self._t.tasks_by_slot.get((service_id, slot), ())
        return [t for t in (self.get_task(i) for i in ids) if t is not None]

    def slot_keys(self, service_ids: Iterable[str] | None = None) -> list[tuple[str, SlotKey]]:
        """(service id, slot key) of every slot holding a task, or those of ``service_ids``: no copies."""
        if service_ids is None:
            return list(self._t.tasks_by_slot)
        wanted = set(service_ids)
        return [key for key in self._t.tasks_by_slot if key[0] in wanted]

    def manager_addrs(self) -> list[tuple[str, str]]:
        """(node id, control address) of every manager that has one, from an index: no node copies."""
        out: list[tuple[str, str]] = []
        for node_id in sorted(self._t.managers):
            node = self._t.objects["node"].get(node_id)
            if isinstance(node, pb.Node) and node.manager_status.addr:
                out.append((node.id, node.manager_status.addr))
        return out

    def manager_by_raft_addr(self, raft_addr: str) -> str | None:
        """The control address of the manager whose Raft address this is (from the index)."""
        for node_id in self._t.managers:
            node = self._t.objects["node"].get(node_id)
            if isinstance(node, pb.Node) and node.manager_status.raft_addr == raft_addr:
                return node.manager_status.addr or None
        return None

    def count(self, table: str) -> int:
        return len(self._t.objects[table])


class WriteTx(ReadTx):
    """Collects changes; reads by ID see this transaction's own writes."""

    def __init__(self, tables: _Tables) -> None:
        super().__init__(tables)
        self.actions: list[pb.StoreAction] = []
        self.effects: list[Effect] = []
        self._pending: dict[tuple[str, str], Object | None] = {}

    def written(self) -> set[tuple[str, str]]:
        """(table, id) of every object this transaction creates, updates or deletes."""
        return set(self._pending)

    def after_commit(self, effect: Effect) -> None:
        """Run ``effect`` once this transaction has committed (at once if it wrote nothing).

        A callback re-run on a version conflict starts on a fresh ``WriteTx``, so the effects of
        the attempt that lost are dropped with it; a transaction that fails runs none.
        """
        self.effects.append(effect)

    def _get(self, table: str, obj_id: str) -> Object | None:
        if (table, obj_id) in self._pending:
            obj = self._pending[(table, obj_id)]
            return _copy(obj) if obj is not None else None
        return super()._get(table, obj_id)

    def _record(self, kind: pb.StoreAction.Kind.ValueType, obj: Object, gone: bool = False) -> None:
        table = table_of(obj)
        action = pb.StoreAction(kind=kind)
        getattr(action, _FIELD_OF_TABLE[table]).CopyFrom(obj)
        self.actions.append(action)
        self._pending[(table, obj.id)] = None if gone else _copy(obj)

    def create(self, obj: Object) -> None:
        self._record(pb.StoreAction.CREATE, obj)

    def update(self, obj: Object) -> None:
        """Write ``obj``; it must carry the version it was read at (optimistic concurrency)."""
        self._record(pb.StoreAction.UPDATE, obj)

    def delete(self, obj: Object) -> None:
        self._record(pb.StoreAction.DELETE, obj, gone=True)


_Write = tuple[Callable[["WriteTx"], object], asyncio.Future[object]]


class _Refused(Exception):
    """The entry was committed but refused where it applied (same verdict on every replica)."""

    def __init__(self, error: ManagerError) -> None:
        super().__init__(str(error))
        self.error = error


def _settle(done: asyncio.Future[object], result: object = None, error: BaseException | None = None) -> None:
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


def _run_effects(effects: list[Effect]) -> None:
    # The transaction is committed: an effect that fails must not make the caller believe the
    # write failed (it would write again), nor keep the other effects from running.
    for effect in effects:
        try:
            effect()
        except Exception:
            log.exception("an after-commit effect failed")


def _copy(obj: T) -> T:
    new = type(obj)()  # type: ignore[call-arg]
    new.CopyFrom(obj)  # type: ignore[attr-defined]
    return new


def _target(action: pb.StoreAction) -> tuple[str, Object]:
    field = action.WhichOneof("target")
    if field is None:
        raise ValueError("store action without a target")
    return field, getattr(action, field)


class MemoryStore:
    """Tables + transactions + watch queues. One instance per manager process."""

    def __init__(self, proposer: Proposer | None = None) -> None:
        self._lock = threading.RLock()
        self._tables = _Tables()
        self._proposer = proposer
        self._local_index = 0  # only used without a proposer
        self._watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[WatchItem]]] = []
        self._keyed: defaultdict[WatchKey, list[_KeyedWatcher]] = defaultdict(list)
        self.last_index = 0
        self._queue: list[_Write] = []  # writes waiting for the next entry
        self._writer: asyncio.Task[None] | None = None

    def set_proposer(self, proposer: Proposer) -> None:
        self._proposer = proposer

    # ---- reads ---------------------------------------------------------------------------
    def view(self, fn: Callable[[ReadTx], T]) -> T:
        with self._lock:
            return fn(ReadTx(self._tables))

    # ---- writes --------------------------------------------------------------------------
    async def update(self, fn: Callable[[WriteTx], T]) -> T:
        """Run ``fn`` in a write transaction and commit its changes through Raft.

        Writes go through one queue with one Raft entry in flight, and the callers that arrive
        meanwhile share the next entry: each callback runs on its own transaction over the state
        the last entry left (the current state: this is the only writer), and joins the entry
        unless an earlier caller there changes one of its objects (then it waits for the next
        entry and runs again on the new state). So writers never race into version conflicts and
        retries, and each caller's changes stay checked against the versions it read. Before,
        every write was its own entry and they raced: during a rolling update the dispatcher's
        status writes lost to the updater's and fell back to an entry per task.

        Errors are each caller's own: one ``fn`` raises itself (such as a caller's stale version,
        found before the entry is proposed) drops only its changes. Only the effects ``fn``
        registered on the attempt that committed run (``WriteTx.after_commit``), once, before this
        returns.
        """
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._queue.append((fn, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued())
        return await done  # type: ignore[return-value]

    async def _write_queued(self) -> None:
        try:
            while self._queue:
                waiting, self._queue = self._queue, []
                try:
                    deferred = await self._commit_next(waiting)
                except Exception as err:  # a bug of ours: fail these writes, keep the queue going
                    log.exception("a store write failed")
                    for _, done in waiting:
                        _settle(done, error=err)
                    deferred = []
                self._queue = deferred + self._queue
        finally:
            # Cancelled (the loop is closing): nobody may wait for ever on a write never made.
            for _, done in self._queue:
                done.cancel()
            self._queue = []

    async def _commit_next(self, waiting: list[_Write]) -> list[_Write]:
        """Commit what of ``waiting`` fits one entry; return the callers left for the next one."""
        joined: list[tuple[asyncio.Future[object], Callable[[WriteTx], object], WriteTx, object]] = []
        deferred: list[_Write] = []
        touched: set[tuple[str, str]] = set()
        actions: list[pb.StoreAction] = []
        with self._lock:
            for fn, done in waiting:
                if done.done():
                    continue  # its caller was cancelled
                if len(joined) >= MAX_CALLERS_PER_ENTRY:
                    deferred.append((fn, done))
                    continue
                tx = WriteTx(self._tables)
                try:
                    result = fn(tx)
                    written = tx.written()
                    if written & touched:
                        deferred.append((fn, done))  # runs again on the state this entry leaves
                        continue
                    if tx.actions:
                        self._check(pb.Transaction(actions=tx.actions), self.last_index + 1)
                except Exception as err:
                    _settle(done, error=err)
                    continue
                touched |= written
                actions.extend(tx.actions)
                joined.append((done, fn, tx, result))
        if not actions:
            for done, _, tx, result in joined:
                _run_effects(tx.effects)
                _settle(done, result=result)
            return deferred
        try:
            await self._commit(actions)
        except _Refused as refused:
            if len(joined) == 1:
                _settle(joined[0][0], error=refused.error)
                return deferred
            # Refused as a whole where it applied (say two new services of one name): each
            # caller alone, so that only the one at fault fails.
            for done, fn, _, _ in joined:
                await self._commit_next([(fn, done)])
            return deferred
        except Exception as err:  # no quorum, leadership lost: nobody's write was made
            for done, _, _, _ in joined:
                _settle(done, error=err)
            return deferred
        except BaseException:
            for done, _, _, _ in joined:
                done.cancel()
            raise
        for done, _, tx, result in joined:
            _run_effects(tx.effects)
            _settle(done, result=result)
        return deferred

    async def batch(self, fns: Iterable[Callable[[WriteTx], object]]) -> list[ManagerError]:
        """Apply many small independent updates; they share entries (see ``update``).

        One that fails (say a stale version) does not keep the others from landing; the errors
        of the ones that failed are returned. Each update's after-commit effects run once.
        """
        results = await asyncio.gather(*(self.update(fn) for fn in fns), return_exceptions=True)
        errors: list[ManagerError] = []
        for result in results:
            if isinstance(result, SequenceConflict | AlreadyExists | NameConflict | NotFound):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
        return errors

    async def _commit(self, actions: list[pb.StoreAction]) -> None:
        entry = pb.Transaction(actions=actions)
        entry.now.GetCurrentTime()
        data = entry.SerializeToString()
        if self._proposer is None:
            with self._lock:
                self._local_index += 1
                result = self.apply_entry(data, self._local_index)
        else:
            result = await self._proposer.propose(data)
        if result:
            kind, _, message = result.partition(":")
            raise _Refused(_ERRORS.get(kind, ManagerError)(message))

    # ---- replication ---------------------------------------------------------------------
    def apply_entry(self, data: bytes, index: int) -> str:
        """Apply one committed entry at Raft ``index``. Deterministic: same verdict on every replica."""
        entry = pb.Transaction.FromString(data)
        with self._lock:
            self.last_index = max(self.last_index, index)
            try:
                staged = self._check(entry, index)
            except ManagerError as err:
                code = next((k for k, f in _ERRORS.items() if type(f("")) is type(err)), "error")
                return f"{code}:{err}"
            events: list[WatchItem] = []
            for action, table, new, old in staged:
                if action == "delete":
                    self._tables.drop(table, new.id)
                else:
                    self._tables.put(table, new)
                events.append(Event(action, table, _copy(new), old))
            events.append(Commit(index))
            self._publish(events)
        return ""

    def _check(self, entry: pb.Transaction, index: int) -> list[tuple[str, str, Object, Object | None]]:
        staged: dict[tuple[str, str], Object | None] = {}
        names: dict[str, str | None] = {}  # lower-cased service name -> id, as staged
        network_names: set[str] = set()  # networks created in this entry
        out: list[tuple[str, str, Object, Object | None]] = []

        def current(table: str, obj_id: str) -> Object | None:
            if (table, obj_id) in staged:
                return staged[(table, obj_id)]
            return self._tables.objects[table].get(obj_id)

        def name_owner(name: str) -> str | None:
            key = name.lower()
            return names[key] if key in names else self._tables.service_by_name.get(key)

        for action in entry.actions:
            table, target = _target(action)
            obj = _copy(target)
            old = current(table, obj.id)
            if action.kind == pb.StoreAction.CREATE:
                if old is not None:
                    raise AlreadyExists(f"{table} {obj.id} already exists")
                obj.meta.created_at.CopyFrom(entry.now)
            elif old is None:
                raise NotFound(f"{table} {obj.id} not found")
            elif action.kind == pb.StoreAction.UPDATE:
                if obj.meta.version.index != old.meta.version.index:
                    raise SequenceConflict()
                obj.meta.created_at.CopyFrom(old.meta.created_at)
            if isinstance(obj, pb.Service) and action.kind != pb.StoreAction.DELETE:
                owner = name_owner(obj.spec.annotations.name)
                if owner is not None and owner != obj.id:
                    raise NameConflict(f"name conflicts with an existing object: {obj.spec.annotations.name}")
                if isinstance(old, pb.Service):
                    names[old.spec.annotations.name.lower()] = None
                names[obj.spec.annotations.name.lower()] = obj.id
            if isinstance(obj, pb.Network) and action.kind == pb.StoreAction.CREATE:
                name = obj.spec.annotations.name
                if name in self._tables.network_by_name or name in network_names:
                    raise NameConflict(f"network with name {name} already exists")
                network_names.add(name)
            if action.kind == pb.StoreAction.DELETE:
                if isinstance(old, pb.Service):
                    names[old.spec.annotations.name.lower()] = None
                staged[(table, obj.id)] = None
                out.append(("delete", table, _copy(old), old))  # type: ignore[arg-type]
                continue
            obj.meta.version.index = index
            obj.meta.updated_at.CopyFrom(entry.now)
            staged[(table, obj.id)] = obj
            name = "create" if action.kind == pb.StoreAction.CREATE else "update"
            out.append((name, table, obj, _copy(old) if old is not None else None))
        return out

    # ---- snapshots -----------------------------------------------------------------------
    def snapshot(self) -> bytes:
        with self._lock:
            snap = pb.StoreSnapshot()
            o = self._tables.objects
            snap.services.extend(o["service"].values())  # type: ignore[arg-type]
            snap.tasks.extend(o["task"].values())  # type: ignore[arg-type]
            snap.nodes.extend(o["node"].values())  # type: ignore[arg-type]
            snap.clusters.extend(o["cluster"].values())  # type: ignore[arg-type]
            snap.networks.extend(o["network"].values())  # type: ignore[arg-type]
            return snap.SerializeToString()

    def digest(self) -> str:
        """SHA-256 over every object, in ID order: equal on managers that applied the same log."""
        import hashlib

        h = hashlib.sha256()
        with self._lock:
            for table in ("cluster", "node", "service", "task", "network"):
                objects = self._tables.objects[table]
                for obj_id in sorted(objects):
                    h.update(objects[obj_id].SerializeToString(deterministic=True))
        return h.hexdigest()

    def restore(self, data: bytes) -> None:
        snap = pb.StoreSnapshot.FromString(data)
        with self._lock:
            self._tables = _Tables()
            for table, items in (
                ("service", snap.services),
                ("task", snap.tasks),
                ("node", snap.nodes),
                ("cluster", snap.clusters),
                ("network", snap.networks),
            ):
                for obj in items:
                    self._tables.put(table, _copy(obj))

    # ---- watching ------------------------------------------------------------------------
    def _publish(self, events: list[WatchItem]) -> None:
        for loop, queue in list(self._watchers):
            try:
                loop.call_soon_threadsafe(_put_all, queue, events)
            except RuntimeError:  # that loop is closed; its watcher is gone
                pass
        if self._keyed:
            self._publish_keyed(events)

    def _publish_keyed(self, events: list[WatchItem]) -> None:
        """Hand each keyed watcher only the events that concern it, then the commit.

        The cost follows the events (a dict lookup per key of each), not the number of keyed
        watchers: a thousand assignment streams cost nothing for a change on another node.
        """
        batches: dict[int, tuple[_KeyedWatcher, list[WatchItem]]] = {}
        for event in events:
            if not isinstance(event, Event):
                continue
            for key in watch_keys(event):
                for watcher in self._keyed.get(key, ()):
                    _, batch = batches.setdefault(id(watcher), (watcher, []))
                    if not batch or batch[-1] is not event:  # one event may match several keys
                        batch.append(event)
        commit = events[-1]
        for watcher, batch in batches.values():
            batch.append(commit)
            try:
                watcher.loop.call_soon_threadsafe(_put_all, watcher.queue, batch)
            except RuntimeError:
                pass

    def _subscribe(self, keys: Iterable[WatchKey] | None) -> tuple[asyncio.Queue[WatchItem], Callable[[], None]]:
        """Register a watcher (call under the lock): its queue and its unsubscribe function."""
        queue: asyncio.Queue[WatchItem] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        if keys is None:
            entry = (loop, queue)
            self._watchers.append(entry)
            return queue, lambda: self._watchers.remove(entry)
        watcher = _KeyedWatcher(loop, queue, frozenset(keys))
        for key in watcher.keys:
            self._keyed[key].append(watcher)

        def unsubscribe() -> None:
            for key in watcher.keys:
                watchers = self._keyed.get(key)
                if watchers is not None:
                    watchers.remove(watcher)
                    if not watchers:
                        del self._keyed[key]

        return queue, unsubscribe

    @asynccontextmanager
    async def watch(self, keys: Iterable[WatchKey] | None = None) -> AsyncIterator[asyncio.Queue[WatchItem]]:
        """Subscribe to committed changes. Subscribe first, then read a snapshot with ``view``.

        With ``keys`` (see ``watch_keys``) only the events that match one of them arrive, each
        transaction's followed by its ``Commit``; transactions that match none are not seen.
        """
        with self._lock:
            queue, unsubscribe = self._subscribe(keys)
        try:
            yield queue
        finally:
            with self._lock:
                unsubscribe()

    @asynccontextmanager
    async def view_and_watch(
        self, fn: Callable[[ReadTx], T], keys: Iterable[WatchKey] | None = None
    ) -> AsyncIterator[tuple[T, asyncio.Queue[WatchItem]]]:
        """A snapshot and a subscription taken atomically: no change falls between them."""
        with self._lock:
            result = fn(ReadTx(self._tables))
            queue, unsubscribe = self._subscribe(keys)
        try:
            yield result, queue
        finally:
            with self._lock:
                unsubscribe()


def _put_all(queue: asyncio.Queue[WatchItem], events: list[WatchItem]) -> None:
    for event in events:
        queue.put_nowait(event)


def iter_nowait(queue: asyncio.Queue[WatchItem]) -> Iterator[WatchItem]:
    """Everything already queued, without waiting."""
    while True:
        try:
            yield queue.get_nowait()
        except asyncio.QueueEmpty:
            return

"""Raft, through pysyncobj. The only module that imports it.

It implements the store's ``Proposer``: the store hands us a serialized ``Transaction``; we
replicate it; pysyncobj calls ``_StoreMachine.apply`` on every manager (on its own thread) with
the entry's Raft index, and the apply result comes back to the proposer's future on the asyncio
loop. Traffic is encrypted with the cluster's Raft secret (pysyncobj unpickles what it receives,
so nothing may reach it unauthenticated). Snapshots are taken in-process (``useFork=False``: a
fork beside grpc's threads is unsafe) and hold the store's protobuf snapshot, not pickled objects.

The tick periods are tuned down from pysyncobj's defaults (which cost ~100 ms per write) and the
election timeouts down to fail over in about a second.

Three things pysyncobj does not do, done here:

- **Term fencing** (swarmkit's ErrLostLeadership). The leadership loop tells us the term its leader
  components run in (``begin_term``); ``propose`` refuses once this manager stopped leading or the
  term moved on, and stamps every entry with that term. pysyncobj forwards a deposed leader's queued
  commands to the new leader, which appends them in its own term: ``_StoreMachine.apply`` rejects an
  entry whose stamp differs from the term of the log entry carrying it, the same verdict on every
  manager, so a stalled leader's writes can never land in a later term.
- **Durability**: every journal append, truncation, the term/vote file and snapshots reach the disk
  (msync/fsync) before pysyncobj goes on, and so before any message that depends on them is sent:
  an entry is acknowledged (by a follower, or counted by the leader itself) only once it is on disk.
- **Divergence alarm**: a follower may drop already-applied entries and receive them again (several
  append messages in flight); that is harmless only if what comes back is identical. The journal
  keeps the applied entries it drops and compares; a difference is logged as CRITICAL and stops
  every further write on this manager.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pysyncobj.serializer
import pysyncobj.syncobj
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.journal import FileJournal, MetaStorer
from pysyncobj.pickle import dumps

from minisw.manager.errors import NoQuorum
from minisw.manager.state.store import MemoryStore

__all__ = ["DurableJournal", "LostLeadership", "RaftNode", "RaftStatus"]

log = logging.getLogger(__name__)


class _DuplicateAppendFilter(logging.Filter):
    """Downgrade pysyncobj's "truncating already-applied log entries" alarm.

    With ``appendEntriesUseBatch=False`` the leader sends each entry as soon as it is proposed, so
    several append messages covering the same indexes can be in flight; a follower that gets the
    second one drops its copies and appends them again without applying them twice. pysyncobj
    raises its alarm before it knows what comes back; ``DurableJournal`` compares the entries that
    come back with the ones dropped and raises the real alarm only if they differ.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("truncating already-applied log entries"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger("pysyncobj").isEnabledFor(logging.DEBUG)
        return True


logging.getLogger("pysyncobj.syncobj").addFilter(_DuplicateAppendFilter())

PROPOSE_TIMEOUT = 3.0
_FENCED = "fenced:"  # apply's verdict on an entry proposed in another term than the one carrying it


class LostLeadership(NoQuorum):
    """This manager stopped leading, or leads a later term, since the write was asked for."""


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_replace(tmp: str, path: str) -> None:
    """pysyncobj's snapshot (and term/vote) replacement, with the file and the rename on disk."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path)


class _DurableMetaStorer(MetaStorer):  # type: ignore[misc]
    """The journal's term/vote file: Raft needs them on disk before a vote is sent or acted on."""

    def storeMeta(self, meta: dict[str, Any]) -> None:
        tmp = self.getPath() + ".tmp"
        with open(tmp, "wb") as f:
            f.write(dumps(meta))
        _durable_replace(tmp, self.getPath())


DivergenceHandler = Callable[[str], None]


class DurableJournal(FileJournal):  # type: ignore[misc]
    """pysyncobj's mmap journal, synced to disk at every change, checking entries it re-appends.

    ``applied`` tells how far the state machine has applied (set once the SyncObj exists);
    ``on_divergence`` hears of an applied entry that came back different.
    """

    def __init__(self, path: str, durable: bool = True) -> None:
        self._durable = durable
        self._batch = False
        self._dropped: dict[int, tuple[bytes, int]] = {}  # applied entries truncated, by index
        self.applied: Callable[[], int] = lambda: 0
        self.on_divergence: DivergenceHandler = lambda message: log.critical("%s", message)
        super().__init__(path)
        if durable:
            self._FileJournal__metaStorer = _DurableMetaStorer(path + ".meta")
            self.flush()
            _fsync_dir(path)

    def _sync(self) -> None:
        if self._durable and not self._batch:
            self.flush()  # msync(MS_SYNC): the mapped pages and the file's size reach the disk

    def add(self, command: bytes, idx: int, term: int) -> None:
        dropped = self._dropped.pop(idx, None)
        if dropped is not None and dropped != (bytes(command), term):
            self.on_divergence(
                f"Raft log diverged: applied entry {idx} (term {dropped[1]}) was replaced by a different "
                f"entry (term {term}); this manager's state no longer matches the other managers'. "
                "Stop it, remove its data directory and join it again."
            )
        super().add(command, idx, term)
        self._sync()

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        applied = self.applied()
        for command, idx, term in self[entryFrom:]:
            if idx <= applied:
                self._dropped[idx] = (bytes(command), term)
        super().deleteEntriesFrom(entryFrom)
        self._sync()

    def deleteEntriesTo(self, entryTo: int) -> None:
        # Log compaction rewrites the whole journal entry by entry: one sync at the end.
        self._batch = True
        try:
            super().deleteEntriesTo(entryTo)
        finally:
            self._batch = False
        self._sync()

    def clear(self) -> None:
        super().clear()
        self._dropped.clear()  # a snapshot replaces the state wholesale
        self._sync()

    def term_at(self, index: int) -> int:
        """The term of the log entry at Raft ``index`` (it must be in the journal)."""
        first = self[0][1]
        _command, idx, term = self[index - first]
        assert idx == index, (idx, index)
        return int(term)


_journal_durability: dict[str, bool] = {}


def _create_journal(path: str | None = None) -> Any:
    # pysyncobj builds its journal inside SyncObj.__init__ from this module-level name.
    assert path is not None, "minisw always gives Raft a journal file"
    return DurableJournal(path, _journal_durability.get(path, True))


pysyncobj.syncobj.createJournal = _create_journal
pysyncobj.serializer.atomicReplace = _durable_replace

_FAILURES = {
    FAIL_REASON.QUEUE_FULL: "the Raft queue is full",
    FAIL_REASON.MISSING_LEADER: "there is no Raft leader",
    FAIL_REASON.DISCARDED: "a new leader discarded the write",
    FAIL_REASON.NOT_LEADER: "this manager stopped being the leader",
    FAIL_REASON.LEADER_CHANGED: "the leader changed before the write committed",
    FAIL_REASON.REQUEST_DENIED: "the leader refused the request",
    FAIL_REASON.UNKNOWN_OUTCOME: "the write's outcome is unknown",
}


_EMPTY_ENTRY = b""  # a Transaction with no actions


class _StoreMachine(SyncObjConsumer):  # type: ignore[misc]
    """The replicated state machine: applies entries to the MemoryStore."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self._store = store

    @replicated  # type: ignore[untyped-decorator]
    def apply(self, data: bytes, term: int | None = None) -> str:
        # raftLastApplied is the index before this entry: it is incremented after we return.
        index = self._syncObj.raftLastApplied + 1
        if term is not None:
            carrier = self._syncObj._SyncObj__raftLog.term_at(index)
            if carrier != term:
                # Proposed by the leader of another term (pysyncobj forwarded a deposed leader's
                # queued command): nothing of it applies. An empty entry keeps the store's index.
                self._store.apply_entry(_EMPTY_ENTRY, index)
                return f"{_FENCED}proposed in term {term}, committed in term {carrier}"
        return self._store.apply_entry(data, index)

    def _serialize(self) -> bytes:
        return self._store.snapshot()

    def _deserialize(self, data: Any) -> None:
        if isinstance(data, bytes):
            self._store.restore(data)


@dataclass(frozen=True)
class RaftStatus:
    """What a manager knows of Raft right now."""

    is_leader: bool
    leader: str | None  # the leader's Raft address
    members: int
    reachable: int  # members this manager is connected to, itself included
    commit_index: int
    term: int

    @property
    def quorum(self) -> int:
        return self.members // 2 + 1


class RaftNode:
    """One manager's Raft member. Start it on the asyncio loop that will await proposals."""

    def __init__(
        self,
        store: MemoryStore,
        *,
        self_addr: str,
        peers: list[str],
        data_dir: str,
        secret: str,
        on_state_change: Callable[[], None],
        durable: bool = True,
    ) -> None:
        self._durable = durable  # False only in benchmarks, to measure what the syncs cost
        self._led_term: int | None = None  # the term this manager's leader components run in
        self._in_flight: set[asyncio.Future[tuple[Any, int]]] = set()
        self._next_read: asyncio.Future[None] | None = None  # the barrier the next readers share
        self._read_running = False
        self._read_task: asyncio.Task[None] | None = None
        self.diverged = ""  # why this manager must not write any more, once its log diverged
        self._store = store
        self._self_addr = self_addr
        self._peers = peers
        self._data_dir = data_dir
        self._secret = secret
        self._on_state_change = on_state_change
        self._machine = _StoreMachine(store)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._syncobj: SyncObj | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        os.makedirs(self._data_dir, exist_ok=True)
        journal_file = os.path.join(self._data_dir, "raft.journal")
        _journal_durability[journal_file] = self._durable
        conf = SyncObjConf(
            password=self._secret,
            # Without it pysyncobj binds 0.0.0.0, and managers sharing a machine collide.
            bindAddress=self._self_addr,
            dynamicMembershipChange=True,
            journalFile=journal_file,
            fullDumpFile=os.path.join(self._data_dir, "raft.snapshot"),
            useFork=False,
            # Send each entry at once instead of waiting for the next batch tick.
            appendEntriesUseBatch=False,
            autoTickPeriod=0.005,
            appendEntriesPeriod=0.05,
            raftMinTimeout=0.3,
            raftMaxTimeout=0.7,
            connectionTimeout=1.5,
            connectionRetryTime=0.3,
            leaderFallbackTimeout=1.5,
            logCompactionMinEntries=10000,
            logCompactionMinTime=600,
            onStateChanged=self._state_changed,
            commandsWaitLeader=False,
        )
        self._syncobj = SyncObj(self._self_addr, list(self._peers), conf=conf, consumers=[self._machine])
        journal: DurableJournal = self._syncobj._SyncObj__raftLog
        syncobj = self._syncobj
        journal.applied = lambda: int(syncobj.raftLastApplied)
        journal.on_divergence = self._diverged
        # pysyncobj's in-process snapshots bypass the journal: durable through _durable_replace.

    def _diverged(self, message: str) -> None:
        log.critical("%s", message)
        self.diverged = message

    def stop(self) -> None:
        if self._syncobj is not None:
            self._syncobj.destroy()
            self._syncobj = None

    def _state_changed(self, _old: int, _new: int) -> None:
        # pysyncobj's thread: hop onto the loop.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_state_change)

    # ---- fencing -------------------------------------------------------------------------
    def begin_term(self, term: int) -> None:
        """The leadership loop starts leader components for ``term``: writes are stamped with it."""
        self._led_term = term

    def end_term(self) -> None:
        """The leader components stop: no write of theirs may be proposed from now on.

        Writes still waiting for their commit get an error now (their outcome is unknown: a later
        leader may still commit them, and then the term stamp rejects them at apply).
        """
        self._led_term = None
        for fut in list(self._in_flight):
            if not fut.done():
                fut.set_exception(LostLeadership("this manager stopped being the leader before the write committed"))
        self._in_flight.clear()

    def leading_term(self) -> int | None:
        return self._led_term

    # ---- proposer --------------------------------------------------------------------------
    async def propose(self, entry: bytes) -> str:
        if self.diverged:
            raise NoQuorum(self.diverged)
        status = self.status()
        term = self._led_term
        if term is None or not status.is_leader or status.term != term:
            raise LostLeadership(
                f"leadership changed: this manager does not lead the term its leader components run in "
                f"({term if term is not None else 'none'}, Raft is at term {status.term}); the write was not made, "
                "try again"
            )
        if status.reachable < status.quorum:
            raise NoQuorum(quorum_message(status))
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[Any, int]] = loop.create_future()

        def callback(result: Any, err: int) -> None:
            loop.call_soon_threadsafe(_resolve, done, (result, err))

        assert self._syncobj is not None
        self._in_flight.add(done)
        try:
            self._machine.apply(entry, term, callback=callback)
            result, err = await asyncio.wait_for(asyncio.shield(done), PROPOSE_TIMEOUT)
        except TimeoutError:
            raise NoQuorum(
                "the write was not committed within "
                f"{PROPOSE_TIMEOUT:.0f}s (its outcome is unknown): {quorum_message(self.status())}"
            ) from None
        finally:
            self._in_flight.discard(done)
        if err != FAIL_REASON.SUCCESS:
            raise NoQuorum(f"the write was not committed: {_FAILURES.get(err, str(err))}")
        if isinstance(result, str) and result.startswith(_FENCED):
            raise LostLeadership(f"the write was not made: {result.removeprefix(_FENCED)} (leadership changed)")
        return str(result or "")

    async def barrier(self) -> None:
        """Wait until everything committed before now is applied here (an empty entry)."""
        await self.propose(_EMPTY_ENTRY)

    async def read_barrier(self) -> None:
        """Return once a read here sees every write acknowledged before the call (a read index).

        An empty entry committed in this leader's term proves that it still led a quorum after
        the call began, and applying it applies everything committed before. Concurrent readers
        share one barrier, but never one that was already under way when they arrived.
        """
        if self._next_read is None:
            self._next_read = asyncio.get_running_loop().create_future()
        mine = self._next_read
        if not self._read_running:
            self._start_read_barrier()
        await asyncio.shield(mine)

    def _start_read_barrier(self) -> None:
        fut, self._next_read = self._next_read, None
        assert fut is not None
        self._read_running = True

        async def run() -> None:
            try:
                await self.barrier()
                fut.set_result(None)
            except Exception as err:  # every reader waiting on it gets the error
                fut.set_exception(err)
            finally:
                self._read_running = False
                if self._next_read is not None:
                    self._start_read_barrier()

        # Marks the error as retrieved even if every reader was cancelled meanwhile.
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._read_task = asyncio.get_running_loop().create_task(run(), name="raft-read-barrier")

    # ---- membership ----------------------------------------------------------------------
    async def _membership(self, call: Callable[..., None], addr: str) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[Any, int]] = loop.create_future()
        call(addr, callback=lambda r, e: loop.call_soon_threadsafe(_resolve, done, (r, e)))
        try:
            _, err = await asyncio.wait_for(done, PROPOSE_TIMEOUT * 2)
        except TimeoutError:
            raise NoQuorum(f"changing Raft membership ({addr}) timed out") from None
        if err != FAIL_REASON.SUCCESS:
            raise NoQuorum(f"changing Raft membership ({addr}) failed: {_FAILURES.get(err, str(err))}")

    async def add_member(self, addr: str) -> None:
        assert self._syncobj is not None
        await self._membership(self._syncobj.addNodeToCluster, addr)

    def match_index(self, addr: str) -> int:
        """How far ``addr``'s log is known to match ours (the leader's view)."""
        if self._syncobj is None:
            return 0
        return int(self._syncobj.getStatus().get(f"match_idx_server_{addr}", 0))

    async def remove_member(self, addr: str) -> None:
        assert self._syncobj is not None
        await self._membership(self._syncobj.removeNodeFromCluster, addr)

    async def transfer_leadership(self, to: str | None = None) -> None:
        """Ask the follower ``to`` (None: the most up-to-date one) to start an election now (Raft's
        TimeoutNow). Only the request is confirmed; the caller watches ``status()`` for the outcome.

        pysyncobj's transfer sends on its connections, which only its own thread may touch: it
        runs from a one-shot tick callback."""
        syncobj = self._syncobj
        assert syncobj is not None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[Any, int]] = loop.create_future()
        fired: list[bool] = []

        def on_tick() -> None:
            if not fired:
                fired.append(True)
                syncobj.transferLeadership(to, callback=lambda r, e: loop.call_soon_threadsafe(_resolve, done, (r, e)))

        syncobj.addOnTickCallback(on_tick)
        try:
            _, err = await asyncio.wait_for(done, PROPOSE_TIMEOUT)
        except TimeoutError:
            raise NoQuorum("handing Raft leadership over timed out") from None
        finally:
            syncobj.removeOnTickCallback(on_tick)
        if err != FAIL_REASON.SUCCESS:
            raise NoQuorum(f"handing Raft leadership over failed: {_FAILURES.get(err, str(err))}")

    # ---- status --------------------------------------------------------------------------
    def members(self) -> list[str]:
        if self._syncobj is None:
            return [self._self_addr]
        return [self._self_addr, *(n.address for n in self._syncobj.otherNodes)]

    def status(self) -> RaftStatus:
        so = self._syncobj
        if so is None:
            return RaftStatus(False, None, 1, 0, 0, 0)
        others = list(so.otherNodes)
        leader = so._getLeader()
        reachable = 1 + sum(1 for n in others if so.isNodeConnected(n))
        return RaftStatus(
            is_leader=so._isLeader(),
            leader=leader.address if leader is not None else None,
            members=1 + len(others),
            reachable=reachable,
            commit_index=so.raftCommitIndex,
            term=so.raftCurrentTerm,
        )


def quorum_message(status: RaftStatus) -> str:
    return (
        f"this manager reaches {status.reachable} of {status.members} managers and "
        f"{status.quorum} are needed for quorum. Make sure more than half of the managers are online."
    )


def _resolve(fut: asyncio.Future[tuple[Any, int]], value: tuple[Any, int]) -> None:
    if not fut.done():
        fut.set_result(value)

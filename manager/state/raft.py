"""Raft, through pysyncobj. The only module that imports it.

It implements the store's ``Proposer``: the store hands us a serialized ``Transaction``; we
replicate it; pysyncobj calls ``_StoreMachine.apply`` on every manager (on its own thread) with
the entry's Raft index, and the apply result comes back to the proposer's future on the asyncio
loop. Traffic is encrypted with the cluster's Raft secret (pysyncobj unpickles what it receives,
so nothing may reach it unauthenticated). Snapshots are taken in-process (``useFork=False``: a
fork beside grpc's threads is unsafe) and hold the store's protobuf snapshot, not pickled objects.

The tick periods are tuned down from pysyncobj's defaults (which cost ~100 ms per write) and the
election timeouts down to fail over in about a second.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated

from minisw.manager.errors import NoQuorum
from minisw.manager.state.store import MemoryStore

__all__ = ["RaftNode", "RaftStatus"]

log = logging.getLogger(__name__)


class _DuplicateAppendFilter(logging.Filter):
    """Downgrade pysyncobj's "truncating already-applied log entries" alarm.

    With ``appendEntriesUseBatch=False`` the leader sends each entry as soon as it is proposed, so
    several append messages covering the same indexes can be in flight; a follower that gets the
    second one drops its (identical, same-term) copies and appends them again without applying
    them twice. Raft only lets a leader of the same term send the same entries, so nothing
    diverges; the message would just alarm operators at every burst of writes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("truncating already-applied log entries"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger("pysyncobj").isEnabledFor(logging.DEBUG)
        return True


logging.getLogger("pysyncobj.syncobj").addFilter(_DuplicateAppendFilter())

PROPOSE_TIMEOUT = 3.0

_FAILURES = {
    FAIL_REASON.QUEUE_FULL: "the Raft queue is full",
    FAIL_REASON.MISSING_LEADER: "there is no Raft leader",
    FAIL_REASON.DISCARDED: "a new leader discarded the write",
    FAIL_REASON.NOT_LEADER: "this manager stopped being the leader",
    FAIL_REASON.LEADER_CHANGED: "the leader changed before the write committed",
    FAIL_REASON.REQUEST_DENIED: "the leader refused the request",
    FAIL_REASON.UNKNOWN_OUTCOME: "the write's outcome is unknown",
}


class _StoreMachine(SyncObjConsumer):  # type: ignore[misc]
    """The replicated state machine: applies entries to the MemoryStore."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self._store = store

    @replicated  # type: ignore[untyped-decorator]
    def apply(self, data: bytes) -> str:
        # raftLastApplied is the index before this entry: it is incremented after we return.
        index = self._syncObj.raftLastApplied + 1
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
    ) -> None:
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
        conf = SyncObjConf(
            password=self._secret,
            # Without it pysyncobj binds 0.0.0.0, and managers sharing a machine collide.
            bindAddress=self._self_addr,
            dynamicMembershipChange=True,
            journalFile=os.path.join(self._data_dir, "raft.journal"),
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

    def stop(self) -> None:
        if self._syncobj is not None:
            self._syncobj.destroy()
            self._syncobj = None

    def _state_changed(self, _old: int, _new: int) -> None:
        # pysyncobj's thread: hop onto the loop.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_state_change)

    # ---- proposer --------------------------------------------------------------------------
    async def propose(self, entry: bytes) -> str:
        status = self.status()
        if status.reachable < status.quorum:
            raise NoQuorum(quorum_message(status))
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[Any, int]] = loop.create_future()

        def callback(result: Any, err: int) -> None:
            loop.call_soon_threadsafe(_resolve, done, (result, err))

        assert self._syncobj is not None
        self._machine.apply(entry, callback=callback)
        try:
            result, err = await asyncio.wait_for(done, PROPOSE_TIMEOUT)
        except TimeoutError:
            raise NoQuorum(
                "the write was not committed within "
                f"{PROPOSE_TIMEOUT:.0f}s (its outcome is unknown): {quorum_message(self.status())}"
            ) from None
        if err != FAIL_REASON.SUCCESS:
            raise NoQuorum(f"the write was not committed: {_FAILURES.get(err, str(err))}")
        return str(result or "")

    async def barrier(self) -> None:
        """Wait until everything committed before now is applied here (an empty entry)."""
        from minisw.proto import objects_pb2 as pb

        await self.propose(pb.Transaction().SerializeToString())

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

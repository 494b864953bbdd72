"""Raft fencing, the divergence alarm and durable journals, on real pysyncobj members.

Three ``RaftNode``s run in this process on loopback ports, each with a store of its own. A leader
"stalls" (as in a GC or VM pause) by blocking its Raft thread in a tick callback.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from minisw.manager.errors import NoQuorum
from minisw.manager.leadership import same_leader_term
from minisw.manager.state.raft import DurableJournal, LostLeadership, RaftNode
from minisw.manager.state.store import MemoryStore
from minisw.proto import objects_pb2 as pb


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Member:
    def __init__(self, raft: RaftNode, store: MemoryStore, addr: str) -> None:
        self.raft, self.store, self.addr = raft, store, addr

    def stall(self) -> threading.Event:
        """Block this member's Raft thread until the returned event is set."""
        release = threading.Event()
        assert self.raft._syncobj is not None
        self.raft._syncobj.addOnTickCallback(release.wait)
        return release

    def has_node(self, node_id: str) -> bool:
        return self.store.view(lambda tx: tx.get_node(node_id)) is not None


@asynccontextmanager
async def cluster(tmp_path: Path, size: int = 3) -> AsyncIterator[list[Member]]:
    addrs = [f"127.0.0.1:{p}" for p in _free_ports(size)]
    members = []
    for i, addr in enumerate(addrs):
        store = MemoryStore()
        raft = RaftNode(
            store,
            self_addr=addr,
            peers=[a for a in addrs if a != addr],
            data_dir=str(tmp_path / f"m{i}"),
            secret="test",
            on_state_change=lambda: None,
        )
        store.set_proposer(raft)
        members.append(Member(raft, store, addr))
    for m in members:
        m.raft.start()
    try:
        yield members
    finally:
        for m in members:
            m.raft.stop()


async def until(cond: Callable[[], object], within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def leader_of(members: list[Member], exclude: Member | None = None) -> Member:
    def find() -> Member | None:
        leaders = [m for m in members if m is not exclude and m.raft.status().is_leader]
        if len(leaders) != 1:
            return None
        if leaders[0].raft.status().reachable < leaders[0].raft.status().quorum:
            return None
        return leaders[0]

    await until(find, what="a leader")
    found = find()
    assert found is not None
    return found


async def lead(m: Member) -> int:
    """What the leadership loop does when a term starts: fence writes to it, apply what is committed."""
    term = m.raft.status().term
    m.raft.begin_term(term)
    await m.raft.barrier()
    return term


async def depose(members: list[Member], old: Member) -> Member:
    """Stall ``old`` until another member leads, then let it go on and follow the new leader."""
    release = old.stall()
    try:
        new = await leader_of(members, exclude=old)
    finally:
        release.set()
    await until(lambda: old.raft.status().leader == new.addr and not old.raft.status().is_leader, what="old follows")
    return new


def node_write(node_id: str) -> bytes:
    entry = pb.Transaction(actions=[pb.StoreAction(kind=pb.StoreAction.CREATE, node=pb.Node(id=node_id))])
    entry.now.GetCurrentTime()
    return entry.SerializeToString()


def test_a_deposed_leader_refuses_to_propose(tmp_path: Path) -> None:
    async def run() -> None:
        async with cluster(tmp_path) as members:
            old = await leader_of(members)
            await lead(old)
            await old.store.update(lambda tx: tx.create(pb.Node(id="before")))
            new = await depose(members, old)
            await lead(new)
            # The old term's components have not been stopped yet: their write must not be made.
            with pytest.raises(LostLeadership):
                await old.store.update(lambda tx: tx.create(pb.Node(id="stale")))
            await new.store.update(lambda tx: tx.create(pb.Node(id="after")))
            await until(lambda: all(m.has_node("after") for m in members), what="the new leader's write")
            assert not any(m.has_node("stale") for m in members)

    asyncio.run(run())


def test_a_queued_write_of_an_old_term_is_rejected_at_apply_on_every_manager(tmp_path: Path) -> None:
    async def run() -> None:
        async with cluster(tmp_path) as members:
            old = await leader_of(members)
            old_term = await lead(old)
            new = await depose(members, old)
            await lead(new)
            # What pysyncobj does with a command the old leader queued in its term: it is forwarded
            # to the new leader and committed in the new term.
            loop = asyncio.get_running_loop()
            done: asyncio.Future[tuple[object, int]] = loop.create_future()
            old.raft._machine.apply(
                node_write("queued"), old_term, callback=lambda r, e: loop.call_soon_threadsafe(done.set_result, (r, e))
            )
            result, _err = await asyncio.wait_for(done, 5)
            assert isinstance(result, str) and "proposed in term" in result, result
            await new.store.update(lambda tx: tx.create(pb.Node(id="after")))
            await until(lambda: all(m.has_node("after") for m in members), what="a later write everywhere")
            assert not any(m.has_node("queued") for m in members)
            # The rejected entry still moved every store's index, so the stores agree.
            assert len({m.store.last_index for m in members}) == 1

    asyncio.run(run())


def test_a_leader_that_flipped_to_follower_and_back_refuses_the_old_terms_writes(tmp_path: Path) -> None:
    async def run() -> None:
        async with cluster(tmp_path) as members:
            old = await leader_of(members)
            first_term = await lead(old)
            for _ in range(10):  # the election after a stall is random: try until ``old`` leads again
                other = await depose(members, old) if old.raft.status().is_leader else await leader_of(members)
                release = other.stall()
                try:
                    again = await leader_of(members, exclude=other)
                finally:
                    release.set()
                await until(lambda o=other: o.raft.status().leader is not None, what="the stalled member to follow")
                if again is old:
                    break
            else:
                pytest.skip("the old leader never won an election again in 10 tries")
            assert old.raft.status().is_leader and old.raft.status().term > first_term
            assert not same_leader_term(True, old.raft.status().term, old.raft.leading_term())
            with pytest.raises(LostLeadership):
                await old.store.update(lambda tx: tx.create(pb.Node(id="stale")))
            await lead(old)  # the leadership loop starts a fresh term: its writes go through
            await old.store.update(lambda tx: tx.create(pb.Node(id="fresh")))
            await until(lambda: all(m.has_node("fresh") for m in members), what="the fresh term's write")
            assert not any(m.has_node("stale") for m in members)

    asyncio.run(run())


def test_leadership_loop_rule_compares_terms() -> None:
    assert same_leader_term(True, 5, 5)
    assert not same_leader_term(True, 7, 5)  # leader -> follower -> leader between two checks
    assert not same_leader_term(False, 5, 5)
    assert not same_leader_term(True, 5, None)


def test_journal_accepts_identical_reappended_entries_and_alarms_on_different_ones(tmp_path: Path) -> None:
    journal = DurableJournal(str(tmp_path / "raft.journal"))
    alarms: list[str] = []
    journal.on_divergence = alarms.append
    journal.applied = lambda: 3
    for idx in (1, 2, 3, 4):
        journal.add(b"cmd%d" % idx, idx, 1)
    journal.deleteEntriesFrom(1)  # entries 2..4 dropped; 2 and 3 were applied
    journal.add(b"cmd2", 2, 1)
    journal.add(b"cmd3", 3, 1)
    journal.add(b"other4", 4, 2)  # not applied yet: a leader may replace it
    assert alarms == []
    journal.deleteEntriesFrom(1)
    journal.add(b"cmd2", 2, 1)
    journal.add(b"different", 3, 2)
    assert len(alarms) == 1 and "applied entry 3 (term 1)" in alarms[0] and "(term 2)" in alarms[0]
    assert journal.term_at(3) == 2
    journal._destroy()


def test_a_diverged_manager_refuses_writes(tmp_path: Path) -> None:
    async def run() -> None:
        async with cluster(tmp_path, size=1) as [only]:
            await leader_of([only])
            await lead(only)
            journal: DurableJournal = only.raft._syncobj._SyncObj__raftLog  # type: ignore[union-attr]
            journal.on_divergence("Raft log diverged: applied entry 2 ...")
            with pytest.raises(NoQuorum, match="diverged"):
                await only.store.update(lambda tx: tx.create(pb.Node(id="n")))

    asyncio.run(run())


def _dirty_kb(path: str) -> int:
    """Dirty pages of ``path``'s mapping in this process: written in memory, not yet on disk."""
    dirty, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:
            inside = line.rstrip().endswith(path)
        elif inside and head[0] in ("Shared_Dirty:", "Private_Dirty:"):
            dirty += int(head[1])
    return dirty


def test_acknowledged_writes_are_on_disk(tmp_path: Path) -> None:
    # tmp_path is on a disk file system here (ext4), where written pages stay dirty until synced.
    async def run() -> None:
        async with cluster(tmp_path, size=1) as [only]:
            await leader_of([only])
            await lead(only)
            journal = str(tmp_path / "m0" / "raft.journal")
            for i in range(20):
                await only.store.update(lambda tx, i=i: tx.create(pb.Node(id=f"n{i}", spec=pb.NodeSpec())))
                assert _dirty_kb(journal) == 0, f"write {i} acknowledged before its journal page reached the disk"

    asyncio.run(run())


def test_concurrent_reads_share_barriers_that_start_after_them(tmp_path: Path) -> None:
    async def run() -> None:
        async with cluster(tmp_path, size=1) as [only]:
            await leader_of([only])
            await lead(only)
            before = only.store.last_index
            await only.raft.read_barrier()
            assert only.store.last_index == before + 1  # one empty entry
            await asyncio.gather(*(only.raft.read_barrier() for _ in range(20)))
            # The first reader's barrier, then one shared by the 19 that arrived while it ran.
            assert only.store.last_index <= before + 3
            only.raft.end_term()
            with pytest.raises(LostLeadership):
                await only.raft.read_barrier()

    asyncio.run(run())


def _dirty_pages(path: Path) -> int:
    """Pages of ``path`` in the page cache not yet written to disk (Linux's cachestat, 6.5+)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        whole = (ctypes.c_uint64 * 2)(0, 0)  # offset 0, length 0: the whole file
        stat = (ctypes.c_uint64 * 5)()  # cache, dirty, writeback, evicted, recently evicted
        if libc.syscall(451, fd, whole, stat, 0) != 0:
            pytest.skip(f"cachestat is not available here (errno {ctypes.get_errno()})")
        return int(stat[1])
    finally:
        os.close(fd)


def test_term_vote_and_snapshots_are_on_disk(tmp_path: Path) -> None:
    async def run() -> None:
        async with cluster(tmp_path, size=1) as [only]:
            await leader_of([only])
            await lead(only)
            assert _dirty_pages(tmp_path / "m0" / "raft.journal.meta") == 0  # the term and vote it cast
            for i in range(5):
                await only.store.update(lambda tx, i=i: tx.create(pb.Node(id=f"n{i}")))
            assert only.raft._syncobj is not None
            only.raft._syncobj.forceLogCompaction()
            snapshot = tmp_path / "m0" / "raft.snapshot"
            await until(snapshot.exists, what="a snapshot")
            assert _dirty_pages(snapshot) == 0

    asyncio.run(run())


def test_manager_state_file_is_on_disk(tmp_path: Path) -> None:
    from minisw.manager.node import STATE_FILE, ManagerState

    ManagerState("id", "127.0.0.1:1", "127.0.0.1:2", "h", "secret", []).save(str(tmp_path))
    assert _dirty_pages(tmp_path / STATE_FILE) == 0

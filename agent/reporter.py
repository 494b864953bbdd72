"""StatusReporter: the latest status of each task, sent to the dispatcher until it is taken.

Reports coalesce per task (the newest wins; an older state never replaces a newer one) and are
flushed in batches by the session; a failed flush keeps them for the next session.
"""

from __future__ import annotations

import asyncio

from minisw.proto import objects_pb2 as pb

__all__ = ["StatusReporter"]


class StatusReporter:
    def __init__(self) -> None:
        self._pending: dict[str, pb.TaskStatus] = {}
        self._latest: dict[str, pb.TaskStatus] = {}
        self._ready = asyncio.Event()

    def report(self, task_id: str, status: pb.TaskStatus) -> None:
        current = self._pending.get(task_id) or self._latest.get(task_id)
        if current is not None and status.state < current.state:
            return
        self._pending[task_id] = status
        self._latest[task_id] = status
        self._ready.set()

    def forget(self, task_id: str) -> None:
        self._pending.pop(task_id, None)
        self._latest.pop(task_id, None)

    def resend_all(self) -> None:
        """After a new session: the new leader may not have seen our last reports."""
        self._pending.update(self._latest)
        if self._pending:
            self._ready.set()

    async def next_batch(self) -> dict[str, pb.TaskStatus]:
        await self._ready.wait()
        self._ready.clear()
        batch, self._pending = self._pending, {}
        return batch

    def put_back(self, batch: dict[str, pb.TaskStatus]) -> None:
        for task_id, status in batch.items():
            newer = self._pending.get(task_id)
            if newer is None or newer.state < status.state:
                self._pending[task_id] = status
        self._ready.set()

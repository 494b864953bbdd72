"""The manager process's pauses: a watchdog for its event loop, and the garbage collector kept short.

Everything a manager does for its agents (heartbeats, sessions, status writes) runs on one
asyncio loop, and Raft's thread shares the interpreter with it. A call that blocks the loop delays
every heartbeat answer; anything that holds the interpreter (the GIL) delays Raft's own heartbeats
too, and followers that miss them for 0.3-0.7 s elect a new leader. The watchdog names how long
the loop was held, so such stalls show in the log where they happen.

The worst such pause was CPython's garbage collector: a full collection walks every tracked
object, and with 500 simulated nodes it took 0.5 s every few seconds (the leader lost its term at
the first one that long). Objects alive once the manager has started are frozen out of the
collector's walks (freeing by reference count still works), and the younger generations are made
larger, so that full collections come rarely: after 20 million net allocations, not 700,000.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

__all__ = ["keep_collections_short", "watch_loop"]

log = logging.getLogger(__name__)

TICK = 0.1
STALL = 0.5  # a loop late by this much is worth a warning
SLOW_COLLECTION = 0.1
# The youngest generation is collected every 20,000 allocations net (CPython's default: 700), the
# next every 10 of those, everything every 100 of those; a young collection walks only the young.
GC_THRESHOLDS = (20_000, 10, 100)


async def watch_loop(tick: float = TICK, stall: float = STALL) -> None:
    while True:
        before = time.monotonic()
        await asyncio.sleep(tick)
        late = time.monotonic() - before - tick
        if late >= stall:
            log.warning("the event loop was blocked for %.2fs: heartbeats and sessions waited as long", late)


class _CollectionTimer:
    def __init__(self) -> None:
        self.started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.monotonic()
            return
        took = time.monotonic() - self.started
        if took >= SLOW_COLLECTION:
            log.warning("a garbage collection (generation %d) held the process for %.2fs", info["generation"], took)


def keep_collections_short() -> None:
    """Freeze what exists now out of the collector's walks, make full collections rarer, and log
    the ones that take long. Called once, as the manager starts."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    if not any(isinstance(cb, _CollectionTimer) for cb in gc.callbacks):
        gc.callbacks.append(_CollectionTimer())

"""A watchdog for the manager's event loop: logs when the loop could not run for a while.

Everything a manager does for its agents (heartbeats, sessions, status writes) runs on one
asyncio loop; a call that blocks it (a long hold of the store's lock, a large computation) delays
every heartbeat answer, and agents that wait too long for one leave for another manager. The
warning names how long the loop was held, so such stalls show in the log where they happen.
"""

from __future__ import annotations

import asyncio
import logging
import time

__all__ = ["watch_loop"]

log = logging.getLogger(__name__)

TICK = 0.1
STALL = 0.5  # a loop late by this much is worth a warning


async def watch_loop(tick: float = TICK, stall: float = STALL) -> None:
    while True:
        before = time.monotonic()
        await asyncio.sleep(tick)
        late = time.monotonic() - before - tick
        if late >= stall:
            log.warning("the event loop was blocked for %.2fs: heartbeats and sessions waited as long", late)

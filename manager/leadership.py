"""LeaderTerm: the leader-only components of one term, run together and stopped together.

A fresh set of components is built for every term (swarmkit's becomeLeader/becomeFollower), so
nothing from an earlier term leaks into the next. They run in one TaskGroup: if one of them
crashes, the others are cancelled and the error surfaces to the ManagerNode, which logs it and
starts a new term while it still leads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

__all__ = ["Component", "LeaderTerm", "same_leader_term"]

log = logging.getLogger(__name__)

Component = Callable[[], Awaitable[None]]


def same_leader_term(is_leader: bool, term: int, running_term: int | None) -> bool:
    """May the leader components started for ``running_term`` go on?

    Only while this manager leads that very term. Comparing terms, not just "am I the leader",
    catches a leader -> follower -> leader flip between two checks: components of the old term
    saw a store that a leader in between may have changed, so a fresh set starts for the new term.
    """
    return is_leader and running_term is not None and term == running_term


class LeaderTerm:
    """Runs ``bootstrap`` once, then every component until cancelled."""

    def __init__(self, bootstrap: Callable[[], Awaitable[None]], components: list[tuple[str, Component]]) -> None:
        self._bootstrap = bootstrap
        self._components = components

    async def run(self) -> None:
        await self._bootstrap()
        log.info("leader term started: %s", ", ".join(name for name, _ in self._components) or "no components")
        async with asyncio.TaskGroup() as group:
            for name, run in self._components:
                group.create_task(_named(name, run), name=name)


async def _named(name: str, run: Component) -> None:
    try:
        await run()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("leader component %s crashed", name)
        raise

"""TaskRunner: drives one task through Swarm's states on this node (swarmkit agent/task.go + exec.Do).

This is the only place an agent changes a task's state. Each pass of the loop takes one step
toward what the manager wants (the task's desired state) from where the task is (its observed
state), reports it, and goes round again; a new assignment for the task interrupts a wait.
States only move forward; a fatal error before STARTING rejects the task, after it fails it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from minisw.agent.exec.controller import Controller, ExitStatus
from minisw.agent.exec.errors import ExecError
from minisw.agent.exec.spec import stop_grace
from minisw.proto import objects_pb2 as pb
from minisw.proto.timeutil import now_ts

__all__ = ["TaskRunner"]

log = logging.getLogger(__name__)

RETRY_DELAY = 1.0
Report = Callable[[str, pb.TaskStatus], None]


class TaskRunner:
    """Owns one task's controller and its observed status."""

    def __init__(self, task: pb.Task, controller: Controller, report: Report) -> None:
        self.task = task
        self.status = pb.TaskStatus()
        self.status.CopyFrom(task.status)
        self._ctlr = controller
        self._report = report
        self._changed = asyncio.Event()

    def update(self, task: pb.Task) -> None:
        """A new version of the assignment; our observed status wins over the manager's copy."""
        self.task = task
        self._changed.set()

    def _set(self, state: int, message: str, err: str = "", **extra: object) -> None:
        if state < self.status.state:
            raise AssertionError(f"task {self.task.id} would move back from {self.status.state} to {state}")
        status = pb.TaskStatus()
        status.CopyFrom(self.status)
        status.state = state  # type: ignore[assignment]
        status.message = message
        status.err = err
        status.timestamp.CopyFrom(now_ts())
        status.ClearField("applied_at")
        status.ClearField("applied_by")
        container = extra.get("container")
        if isinstance(container, pb.ContainerStatus):
            status.container.CopyFrom(container)
        ports = extra.get("ports")
        if isinstance(ports, list):
            del status.port_status.ports[:]
            status.port_status.ports.extend(ports)
        networks = extra.get("networks")
        if isinstance(networks, list):
            del status.networks[:]
            status.networks.extend(networks)
        self.status = status
        self._report(self.task.id, status)

    async def _wait_change(self) -> None:
        await self._changed.wait()
        self._changed.clear()

    async def run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except ExecError as err:
                if err.temporary:
                    log.warning("task %s: %s; retrying", self.task.id, err)
                    await asyncio.sleep(RETRY_DELAY)
                    continue
                if self.status.state < pb.STARTING:
                    self._set(pb.REJECTED, "rejected", str(err))
                elif self.status.state <= pb.RUNNING:
                    self._set(pb.FAILED, "failed", str(err))
            except Exception as err:
                log.exception("task %s: unexpected error", self.task.id)
                if self.status.state <= pb.RUNNING:
                    state = pb.REJECTED if self.status.state < pb.STARTING else pb.FAILED
                    self._set(state, "failed", f"minisw agent: {err}")

    async def _step(self) -> None:
        desired, state = self.task.desired_state, self.status.state
        if state > pb.RUNNING:
            await self._wait_change()  # terminal: a task never runs again
            return
        if desired >= pb.SHUTDOWN:
            if state >= pb.PREPARING:
                await self._ctlr.shutdown(stop_grace(self.task))
            self._set(pb.SHUTDOWN, "shutdown")
            return
        if state < pb.ACCEPTED:
            self._set(pb.ACCEPTED, "accepted")
        elif state < pb.PREPARING:
            self._set(pb.PREPARING, "preparing")
        elif state < pb.READY:
            await self._ctlr.prepare()
            self._set(pb.READY, "prepared")
        elif state < pb.STARTING:
            if desired < pb.RUNNING:
                await self._wait_change()  # held at READY (restart delay, stop-first update)
                return
            self._set(pb.STARTING, "starting")
        elif state < pb.RUNNING:
            started = await self._ctlr.start()
            self._set(
                pb.RUNNING,
                "started",
                container=pb.ContainerStatus(container_id=started.container_id, pid=started.pid),
                ports=started.ports,
                networks=started.networks,
            )
        else:
            await self._watch_running()

    async def _watch_running(self) -> None:
        exit_wait = asyncio.ensure_future(self._ctlr.wait())
        change = asyncio.ensure_future(self._wait_change())
        try:
            done, _ = await asyncio.wait({exit_wait, change}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (exit_wait, change):
                if not fut.done():
                    fut.cancel()
        if exit_wait in done:
            self._exited(exit_wait.result())

    def _exited(self, result: ExitStatus) -> None:
        container = pb.ContainerStatus()
        container.CopyFrom(self.status.container)
        container.exit_code = result.exit_code
        if result.unhealthy:
            self._set(pb.FAILED, "failed", "dockerexec: unhealthy container", container=container)
        elif result.exit_code == 0:
            self._set(pb.COMPLETE, "finished", container=container)
        else:
            self._set(pb.FAILED, "failed", f"task: non-zero exit ({result.exit_code})", container=container)

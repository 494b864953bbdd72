"""The convergence display of create/update/scale/rollback (docker/cli service/progress).

Every 200 ms: read the service, its up-to-date tasks and the nodes; draw one line per slot (up
to 20) and an overall count; once every task runs, wait the monitor period to see they stay up.
On a terminal the lines are redrawn in place with bars; otherwise each changed line prints once.
``-q`` waits all the same and only drops the drawing (docker discards the progress stream).
"""

from __future__ import annotations

import io
import sys
import time
from typing import TextIO

import click

from minisw.cli.client import Client
from minisw.proto import control_pb2 as api
from minisw.proto import objects_pb2 as pb
from minisw.proto.defaults import DEFAULT_UPDATE_MONITOR
from minisw.proto.timeutil import seconds

__all__ = ["ConvergenceFailed", "wait_for_service"]

POLL = 0.2
ROLLBACK_GRACE = 10.0
MAX_SLOT_LINES = 20
_ORDINAL: dict[int, int] = {
    pb.NEW: 1,
    pb.PENDING: 3,
    pb.ASSIGNED: 4,
    pb.ACCEPTED: 5,
    pb.PREPARING: 6,
    pb.READY: 7,
    pb.STARTING: 8,
    pb.RUNNING: 9,
}
_US = pb.UpdateStatus


class ConvergenceFailed(click.ClickException):
    """The service did not converge: the update paused, or the rollback did."""


class _Screen:
    """Redraws a block of lines on a terminal; prints changed lines once elsewhere."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out, self.tty = out, tty
        self._shown: list[str] = []
        self._printed: dict[str, str] = {}

    def draw(self, lines: list[tuple[str, str]]) -> None:
        if self.tty:
            if self._shown:
                self.out.write(f"\x1b[{len(self._shown)}A")
            text = [f"{key}{value}" for key, value in lines]
            for line in text:
                self.out.write(f"\x1b[2K{line}\n")
            self._shown = text
        else:
            for key, value in lines:
                if "[" in value:  # bars only make sense on a terminal
                    value = value.split("[", 1)[0].rstrip()
                if self._printed.get(key) != value:
                    self._printed[key] = value
                    self.out.write(f"{key}{value}\n")
        self.out.flush()

    def message(self, line: str) -> None:
        if self._printed.get(line) == "":
            return
        self._printed[line] = ""
        self.out.write(line + "\n")
        self._shown = []
        self.out.flush()


def _bar(state: int) -> str:
    n = _ORDINAL.get(state, 0)
    width = 50
    fill = width * n // 9
    arrow = ">" if fill else ""
    return "[" + "=" * max(0, fill - 1) + arrow + " " * (width - fill) + "]"


def _slot_line(task: pb.Task, tty: bool) -> str:
    if task.status.err:
        err = task.status.err.replace("\n", " ")
        return err if len(err) <= 75 else err[:74] + "…"
    name = str(pb.TaskState.Name(task.status.state)).lower()
    if task.status.state > pb.RUNNING:
        return name
    return f"{name:<9} {_bar(task.status.state)}" if tty else name


class _Discard(io.StringIO):
    """Where the progress of ``-q`` goes."""

    def write(self, text: str) -> int:
        return len(text)


def wait_for_service(
    client: Client, service_id: str, ref: str, out: TextIO | None = None, *, quiet: bool = False
) -> None:
    """Block until the service converges; raise ConvergenceFailed if its update pauses.
    ``quiet`` waits just as long and prints nothing; a pause still fails the command."""
    out = _Discard() if quiet else (out or sys.stdout)
    screen = _Screen(out, out.isatty())
    stable_since: float | None = None
    rollback_announced = False
    while True:
        service = client.call("GetService", api.GetServiceRequest(service_id=service_id)).service
        if service.HasField("job_status"):  # a job converges when it completes: cli/jobprogress.py
            from minisw.cli.jobprogress import wait_for_job

            return wait_for_job(client, service_id, screen)
        tasks = client.call("ListTasks", api.ListTasksRequest(service_ids=[service_id], up_to_date=True)).tasks
        nodes = client.call("ListNodes", api.ListNodesRequest()).nodes
        down = {n.id for n in nodes if n.status.state == pb.NodeStatus.DOWN}
        tasks = [t for t in tasks if t.node_id not in down]

        status = service.update_status
        if status.state == _US.PAUSED:
            raise ConvergenceFailed(f"service update paused: {status.message}")
        if status.state == _US.ROLLBACK_PAUSED:
            raise ConvergenceFailed(f"service rollback paused: {status.message}")
        if status.state == _US.ROLLBACK_STARTED and not rollback_announced and status.message:
            screen.message(f"rollback: {status.message}")
            rollback_announced = True
        rolling_back = status.state in (_US.ROLLBACK_STARTED, _US.ROLLBACK_COMPLETED)

        lines, running, total = _progress_lines(service, tasks, nodes, screen.tty)
        prefix = "rolling back update: " if rolling_back else ""
        if total is None:
            overall = "overall progress: waiting for new tasks"
        else:
            overall = f"overall progress: {prefix}{running} out of {total} tasks"
        screen.draw([("", overall), *lines])

        converged = total is not None and running == total
        if converged:
            monitor = DEFAULT_UPDATE_MONITOR
            cfg = service.spec.update
            if service.spec.HasField("update") and cfg.HasField("monitor") and seconds(cfg.monitor) > 0:
                monitor = seconds(cfg.monitor)
            now = time.monotonic()
            if stable_since is None:
                stable_since = now
            left = monitor - (now - stable_since)
            # A rollback is over when the manager says so (it monitors the last slot first); wait
            # for that, a little, so that the outcome printed is the manager's.
            awaiting_rollback = status.state == _US.ROLLBACK_STARTED and now - stable_since < monitor + ROLLBACK_GRACE
            if left <= 0 and not awaiting_rollback:
                screen.message(f"verify: Service {ref} converged")
                if status.state == _US.ROLLBACK_COMPLETED:
                    screen.message("rollback: rollback completed")
                return
            if left > 0:
                screen.draw([("verify: ", f"Waiting {int(left) + 1} seconds to verify that tasks are stable...")])
        else:
            if stable_since is not None:
                screen.message("verify: Detected task failure")
            stable_since = None
        time.sleep(POLL)


def _progress_lines(
    service: pb.Service, tasks: list[pb.Task], nodes: list[pb.Node], tty: bool
) -> tuple[list[tuple[str, str]], int, int | None]:
    running_tasks = [t for t in tasks if t.status.state == pb.RUNNING and t.desired_state <= pb.RUNNING]
    if service.spec.HasField("global"):
        by_node: dict[str, pb.Task] = {}
        for task in sorted(tasks, key=lambda t: (t.desired_state, t.status.state)):
            by_node.setdefault(task.node_id, task)
        if not by_node:
            return [], 0, None
        lines = [(f"{node_id[:12]}: ", _slot_line(task, tty)) for node_id, task in sorted(by_node.items())]
        running = len({t.node_id for t in running_tasks})
        return (lines if len(lines) <= MAX_SLOT_LINES else []), running, len(by_node)
    replicas = service.spec.replicated.replicas
    by_slot: dict[int, pb.Task] = {}
    for task in sorted(tasks, key=lambda t: (t.desired_state, t.status.state)):
        if task.desired_state <= pb.RUNNING or task.slot not in by_slot:
            by_slot.setdefault(task.slot, task)
    lines = []
    if replicas <= MAX_SLOT_LINES:
        for i, slot in enumerate(sorted(by_slot)[:replicas], start=1):
            lines.append((f"{i}/{replicas}: ", _slot_line(by_slot[slot], tty)))
    running = min(len({t.slot for t in running_tasks}), replicas)
    return lines, running, replicas

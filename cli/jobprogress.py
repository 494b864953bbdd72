"""The progress display of a job (docker/cli service/progress, replicated and global job updaters).

A job converges when its current iteration's tasks have completed: ``job progress: C out of T
complete``, for a replicated job also ``active tasks: A out of M tasks``, then one line per slot
(or node) up to 20, and ``job complete`` at the end, with no verify wait (a job stays done).

Beyond docker, which waits forever: a job whose failed tasks the restart policy gave up on (and
which has no more tasks to start) ends the command with an error saying so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click

from minisw.cli.client import Client
from minisw.proto import control_pb2 as api
from minisw.proto import objects_pb2 as pb
from minisw.proto.model import of_current_iteration

if TYPE_CHECKING:
    from minisw.cli.progress import _Screen

__all__ = ["JobFailed", "job_progress", "wait_for_job"]

POLL = 0.2
MAX_LINES = 20
_STATE_WIDTH = 9  # docker pads the state to its longest name that is not terminal, or "complete"
_ORDINAL: dict[int, int] = {
    pb.NEW: 1,
    pb.PENDING: 3,
    pb.ASSIGNED: 4,
    pb.ACCEPTED: 5,
    pb.PREPARING: 6,
    pb.READY: 7,
    pb.STARTING: 8,
    pb.RUNNING: 9,
    pb.COMPLETE: 10,
    pb.SHUTDOWN: 11,
    pb.FAILED: 12,
    pb.REJECTED: 13,
}


class JobFailed(click.ClickException):
    """Tasks of the job failed and will not be retried: it cannot complete."""


def _bar(current: int, total: int) -> str:
    width = 50
    fill = width * min(current, total) // total if total else width
    arrow = ">" if fill else ""
    return " [" + "=" * max(0, fill - 1) + arrow + " " * (width - fill) + "]"


def _task_line(task: pb.Task, tty: bool) -> str:
    if task.status.err:
        err = task.status.err.replace("\n", " ")
        return err if len(err) <= 75 else err[:74] + "…"
    name = str(pb.TaskState.Name(task.status.state)).lower()
    return f"{name:<{_STATE_WIDTH}}{_bar(_ORDINAL.get(task.status.state, 0), 10)}" if tty else name


K = TypeVar("K", int, str)


def _lowest_state(tasks: list[pb.Task], key: Callable[[pb.Task], K]) -> dict[K, pb.Task]:
    """Per slot (or node), the task with the lowest observed state, as docker shows it."""
    out: dict[K, pb.Task] = {}
    for task in tasks:
        k = key(task)
        if k not in out or _ORDINAL.get(out[k].status.state, 0) > _ORDINAL.get(task.status.state, 0):
            out[k] = task
    return out


def job_progress(service: pb.Service, tasks: list[pb.Task], tty: bool) -> tuple[list[tuple[str, str]], bool, bool]:
    """(lines, complete, given up) for the job's current iteration. Pure."""
    current = [t for t in tasks if of_current_iteration(service, t)]
    unfinished = [t for t in current if t.desired_state <= pb.COMPLETE and t.status.state != pb.COMPLETE]
    if service.spec.HasField("replicated_job"):
        job = service.spec.replicated_job
        total = job.total_completions
        by_slot = _lowest_state(current, lambda t: t.slot)
        done = sum(1 for t in current if t.status.state == pb.COMPLETE)
        digits = len(str(total))
        active = sum(1 for t in by_slot.values() if _ORDINAL.get(t.status.state, 0) < _ORDINAL[pb.COMPLETE])
        most = min(total - done, job.max_concurrent)
        width = len(str(job.max_concurrent))
        lines = [
            ("job progress: ", f"{done:>{digits}} out of {total} complete" + (_bar(done, total) if tty else "")),
            ("active tasks: ", f"{active:>{width}} out of {most:>{width}} tasks"),
        ]
        if total <= MAX_LINES:
            lines += [(f"{slot + 1}/{total}: ", _task_line(by_slot[slot], tty)) for slot in sorted(by_slot)]
        slots_left = len({t.slot for t in current}) < total
        return lines, done >= total, not unfinished and not slots_left and done < total
    by_node = _lowest_state(current, lambda t: t.node_id)
    total = len(by_node)
    if not total:
        return [("job progress: ", "waiting for tasks")], False, False
    done = sum(1 for t in by_node.values() if t.status.state == pb.COMPLETE)
    digits = len(str(total))
    lines = [("job progress: ", f"{done:>{digits}} out of {total} complete" + (_bar(done, total) if tty else ""))]
    if total <= MAX_LINES:
        lines += [(f"{node[:12]}: ", _task_line(task, tty)) for node, task in sorted(by_node.items())]
    gave_up = total > 0 and not unfinished and done < total
    return lines, total > 0 and done == total, gave_up


def wait_for_job(client: Client, service_id: str, screen: _Screen) -> None:
    """Draw the job's progress until its current iteration completes."""
    while True:
        service = client.call("GetService", api.GetServiceRequest(service_id=service_id)).service
        tasks = client.call("ListTasks", api.ListTasksRequest(service_ids=[service_id])).tasks
        lines, complete, gave_up = job_progress(service, list(tasks), screen.tty)
        screen.draw(lines)
        if complete:
            screen.message("job complete")
            return
        if gave_up:
            raise JobFailed(
                "job did not complete: tasks failed and the restart policy does not retry them "
                "(see `minisw service ps`)"
            )
        time.sleep(POLL)

"""Pure rules over the object model that several components share."""

from __future__ import annotations

from minisw.proto import objects_pb2 as pb
from minisw.proto.constraints import node_matches

__all__ = [
    "JOB_MODES",
    "is_job",
    "is_task_dirty",
    "is_terminal",
    "job_service_counts",
    "of_current_iteration",
    "state_name",
    "task_name",
]

JOB_MODES = ("replicated_job", "global_job")


def state_name(state: int) -> str:
    return pb.TaskState.Name(state).lower()  # type: ignore[arg-type]


def is_terminal(task: pb.Task) -> bool:
    return task.status.state > pb.RUNNING


def is_job(spec: pb.ServiceSpec) -> bool:
    """A service whose tasks run to completion (replicated-job, global-job)."""
    return spec.WhichOneof("mode") in JOB_MODES


def of_current_iteration(service: pb.Service, task: pb.Task) -> bool:
    """A job's task that belongs to the job's current run (tasks of earlier runs are history)."""
    return task.HasField("job_iteration") and task.job_iteration.index == service.job_status.job_iteration.index


def job_service_counts(service: pb.Service, tasks: list[pb.Task]) -> tuple[int, int, int]:
    """A job's (running, desired, completed) as swarmkit's ListServiceStatuses counts them: tasks of
    the current iteration only; desired is max-concurrent for a replicated job, and for a global
    job the tasks still to complete."""
    current = [t for t in tasks if of_current_iteration(service, t)]
    running = sum(1 for t in current if t.status.state == pb.RUNNING)
    completed = sum(1 for t in current if t.status.state == pb.COMPLETE)
    if service.spec.HasField("replicated_job"):
        desired = service.spec.replicated_job.max_concurrent
    else:
        desired = sum(1 for t in current if t.desired_state == pb.COMPLETE and t.status.state != pb.COMPLETE)
    return running, desired, completed


def is_task_dirty(service: pb.Service, task: pb.Task, node: pb.Node | None) -> bool:
    """Whether the task no longer matches the service's spec and must be replaced (swarmkit IsTaskDirty).

    ``node`` is the task's node (None if it has none). A change of placement alone leaves a task
    alone while its node still satisfies the service's constraints; a task on a node that does
    not (or on no node) is dirty and the updater moves it.
    """
    if task.spec_version.index == service.spec_version.index and task.spec == service.spec.task:
        return False
    want = pb.TaskSpec()
    want.CopyFrom(service.spec.task)
    have = pb.TaskSpec()
    have.CopyFrom(task.spec)
    placement_changed = want.placement != have.placement
    want.ClearField("placement")
    have.ClearField("placement")
    if want != have:
        return True
    if list(task.endpoint.spec.ports) != list(service.spec.endpoint.ports):
        return True
    return placement_changed and (node is None or not node_matches(service.spec.task.placement.constraints, node))


def task_name(service_name: str, task: pb.Task) -> str:
    """``<service>.<slot>`` for replicated tasks, ``<service>.<node id>`` for global ones."""
    suffix = str(task.slot) if task.slot else task.node_id
    return f"{service_name}.{suffix}"

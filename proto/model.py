"""Pure rules over the object model that several components share."""

from __future__ import annotations

from minisw.proto import objects_pb2 as pb

__all__ = ["is_task_dirty", "is_terminal", "state_name", "task_name"]


def state_name(state: int) -> str:
    return pb.TaskState.Name(state).lower()  # type: ignore[arg-type]


def is_terminal(task: pb.Task) -> bool:
    return task.status.state > pb.RUNNING


def is_task_dirty(service: pb.Service, task: pb.Task) -> bool:
    """Whether the task no longer matches the service's spec and must be replaced (swarmkit IsTaskDirty).

    Placement is left out: a placement-only change does not replace tasks whose node still fits;
    the constraint enforcer handles the ones that no longer do.
    """
    if task.spec_version.index == service.spec_version.index and task.spec == service.spec.task:
        return False
    want = pb.TaskSpec()
    want.CopyFrom(service.spec.task)
    have = pb.TaskSpec()
    have.CopyFrom(task.spec)
    want.ClearField("placement")
    have.ClearField("placement")
    if want != have:
        return True
    return list(task.endpoint.spec.ports) != list(service.spec.endpoint.ports)


def task_name(service_name: str, task: pb.Task) -> str:
    """``<service>.<slot>`` for replicated tasks, ``<service>.<node id>`` for global ones."""
    suffix = str(task.slot) if task.slot else task.node_id
    return f"{service_name}.{suffix}"

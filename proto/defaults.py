"""Swarm's defaults (swarmkit api/defaults): applied at use time, never written into stored specs."""

from __future__ import annotations

from minisw.proto import objects_pb2 as pb
from minisw.proto.timeutil import duration

__all__ = [
    "DEFAULT_RESTART_DELAY",
    "DEFAULT_STOP_GRACE",
    "DEFAULT_UPDATE_MONITOR",
    "TASK_HISTORY_RETENTION",
    "interpolate_service_spec",
    "restart_policy",
    "update_config",
]

DEFAULT_RESTART_DELAY = 5.0
DEFAULT_STOP_GRACE = 10.0
DEFAULT_UPDATE_MONITOR = 5.0
TASK_HISTORY_RETENTION = 5


def restart_policy(spec: pb.TaskSpec) -> pb.RestartPolicy:
    policy = pb.RestartPolicy(condition=pb.RestartPolicy.ANY)
    if spec.HasField("restart"):
        policy.CopyFrom(spec.restart)
    if not policy.HasField("delay"):
        policy.delay.CopyFrom(duration(DEFAULT_RESTART_DELAY))
    return policy


def update_config(cfg: pb.UpdateConfig | None) -> pb.UpdateConfig:
    out = pb.UpdateConfig(parallelism=1)
    if cfg is not None:
        out.CopyFrom(cfg)
    if not out.HasField("monitor"):
        out.monitor.CopyFrom(duration(DEFAULT_UPDATE_MONITOR))
    return out


def interpolate_service_spec(spec: pb.ServiceSpec) -> pb.ServiceSpec:
    """The spec with defaults filled in, as ``docker service inspect`` shows it."""
    out = pb.ServiceSpec()
    out.CopyFrom(spec)
    if not out.task.container.HasField("stop_grace_period"):
        out.task.container.stop_grace_period.CopyFrom(duration(DEFAULT_STOP_GRACE))
    out.task.restart.CopyFrom(restart_policy(out.task))
    out.update.CopyFrom(update_config(spec.update if spec.HasField("update") else None))
    out.rollback.CopyFrom(update_config(spec.rollback if spec.HasField("rollback") else None))
    if not out.HasField("endpoint"):
        out.endpoint.CopyFrom(pb.EndpointSpec())
    return out

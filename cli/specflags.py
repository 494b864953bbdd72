"""Docker's ``service create``/``update`` flags and how they turn into a ServiceSpec. Pure but for click."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from minisw.cli.units import parse_cpus, parse_duration, parse_size
from minisw.proto import objects_pb2 as pb

__all__ = [
    "apply_common_flags",
    "config_options",
    "parse_publish",
    "split_kv",
]

F = Callable[..., Any]

_RESTART_CONDITIONS = {"none": 0, "on-failure": 1, "any": 2}
_FAILURE_ACTIONS = {"pause": 0, "continue": 1, "rollback": 2}
_ORDERS = {"stop-first": 0, "start-first": 1}
_PROTOCOLS = {"tcp": 0, "udp": 1, "sctp": 2}
_PUBLISH_MODES = {"ingress": 0, "host": 1}


def config_options(fn: F) -> F:
    """The flags that create and update share (their values stay None unless given)."""
    opts = [
        click.option("--limit-cpu", help="Limit CPUs"),
        click.option("--limit-memory", help="Limit Memory"),
        click.option("--reserve-cpu", help="Reserve CPUs"),
        click.option("--reserve-memory", help="Reserve Memory"),
        click.option(
            "--restart-condition",
            type=click.Choice(list(_RESTART_CONDITIONS)),
            help='Restart when condition is met ("none", "on-failure", "any") (default "any")',
        ),
        click.option("--restart-delay", help="Delay between restart attempts (ns|us|ms|s|m|h) (default 5s)"),
        click.option(
            "--restart-max-attempts", type=click.IntRange(min=0), help="Maximum number of restarts before giving up"
        ),
        click.option("--restart-window", help="Window used to evaluate the restart policy (ns|us|ms|s|m|h)"),
        click.option("--stop-grace-period", help="Time to wait before force killing a container (default 10s)"),
        click.option("--stop-signal", help="Signal to stop the container"),
        click.option(
            "--replicas-max-per-node",
            type=click.IntRange(min=0),
            help="Maximum number of tasks per node (default 0 = unlimited)",
        ),
        click.option("--health-cmd", help="Command to run to check health"),
        click.option("--health-interval", help="Time between running the check (ms|s|m|h)"),
        click.option("--health-timeout", help="Maximum time to allow one check to run (ms|s|m|h)"),
        click.option(
            "--health-retries", type=click.IntRange(min=0), help="Consecutive failures needed to report unhealthy"
        ),
        click.option(
            "--health-start-period", help="Start period for the container to initialize before counting retries"
        ),
        click.option(
            "--no-healthcheck", is_flag=True, default=None, help="Disable any container-specified HEALTHCHECK"
        ),
        click.option("-w", "--workdir", help="Working directory inside the container"),
        click.option("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>])"),
        click.option("--hostname", help="Container hostname"),
        click.option("--init", is_flag=True, default=None, help="Use an init inside each service container"),
        click.option("-t", "--tty", is_flag=True, default=None, help="Allocate a pseudo-TTY"),
        click.option(
            "--read-only", is_flag=True, default=None, help="Mount the container's root filesystem as read only"
        ),
        click.option(
            "--endpoint-mode", type=click.Choice(["vip", "dnsrr"]), help='Endpoint mode (vip or dnsrr) (default "vip")'
        ),
        click.option(
            "--no-resolve-image",
            is_flag=True,
            default=False,
            help="Do not query the registry to resolve image digest (there is no registry: always on)",
        ),
        click.option(
            "-d",
            "--detach",
            is_flag=True,
            default=False,
            help="Exit immediately instead of waiting for the service to converge",
        ),
        click.option("-q", "--quiet", is_flag=True, default=False, help="Suppress progress output"),
    ]
    for prefix, what in (("update", "Update"), ("rollback", "Rollback")):
        opts += [
            click.option(
                f"--{prefix}-parallelism",
                type=click.IntRange(min=0),
                help=f"Maximum number of tasks {what.lower()}d simultaneously (0: all at once) (default 1)",
            ),
            click.option(f"--{prefix}-delay", help=f"Delay between {what.lower()}s (ns|us|ms|s|m|h) (default 0s)"),
            click.option(
                f"--{prefix}-failure-action",
                type=click.Choice(list(_FAILURE_ACTIONS) if prefix == "update" else ["pause", "continue"]),
                help=f'Action on {what.lower()} failure (default "pause")',
            ),
            click.option(
                f"--{prefix}-monitor",
                help=f"Duration after each task {what.lower()} to monitor for failure (ns|us|ms|s|m|h) (default 5s)",
            ),
            click.option(
                f"--{prefix}-max-failure-ratio",
                type=click.FloatRange(0, 1),
                help=f"Failure rate to tolerate during an {what.lower()} (default 0)",
            ),
            click.option(
                f"--{prefix}-order",
                type=click.Choice(list(_ORDERS)),
                help=f'{what} order ("start-first", "stop-first") (default "stop-first")',
            ),
        ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def split_kv(value: str, flag: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not key:
        raise click.BadParameter(f'invalid value "{value}": expected KEY=VALUE', param_hint=flag)
    return key, val if sep else ""


def parse_publish(value: str) -> pb.PortConfig:
    """``8080:80``, ``8080:80/udp``, ``80`` or ``published=8080,target=80,protocol=tcp,mode=host``."""
    port = pb.PortConfig()
    hint = "-p/--publish"
    try:
        if "=" in value:
            for part in value.split(","):
                key, val = split_kv(part.strip(), hint)
                if key in ("published", "target"):
                    setattr(port, f"{key}_port", int(val))
                elif key == "protocol":
                    port.protocol = _PROTOCOLS[val]  # type: ignore[assignment]
                elif key == "mode":
                    port.publish_mode = _PUBLISH_MODES[val]  # type: ignore[assignment]
                else:
                    raise click.BadParameter(f'invalid field "{key}" in "{value}"', param_hint=hint)
        else:
            ports, _, proto = value.partition("/")
            if proto:
                port.protocol = _PROTOCOLS[proto]  # type: ignore[assignment]
            published, _, target = ports.rpartition(":")
            port.target_port = int(target)
            if published:
                port.published_port = int(published)
    except (ValueError, KeyError):
        raise click.BadParameter(
            f'invalid publish value "{value}": use PUBLISHED:TARGET[/PROTOCOL], e.g. 8080:80, '
            "or published=8080,target=80,protocol=tcp,mode=ingress",
            param_hint=hint,
        ) from None
    for name, number in (("target", port.target_port), ("published", port.published_port)):
        if number > 65535 or (name == "target" and number < 1):
            raise click.BadParameter(
                f'invalid publish value "{value}": {name} port {number} is not within 1-65535', param_hint=hint
            )
    return port


def _dur(value: str, flag: str, target: Any, field: str) -> None:
    getattr(target, field).FromNanoseconds(parse_duration(value, flag))


def apply_common_flags(spec: pb.ServiceSpec, o: dict[str, Any], *, creating: bool) -> None:
    """Write every given flag of ``config_options`` into ``spec``."""
    task, c = spec.task, spec.task.container
    if o["limit_cpu"] is not None:
        task.resources.limits.nano_cpus = parse_cpus(o["limit_cpu"], "--limit-cpu")
    if o["limit_memory"] is not None:
        task.resources.limits.memory_bytes = parse_size(o["limit_memory"], "--limit-memory")
    if o["reserve_cpu"] is not None:
        task.resources.reservations.nano_cpus = parse_cpus(o["reserve_cpu"], "--reserve-cpu")
    if o["reserve_memory"] is not None:
        task.resources.reservations.memory_bytes = parse_size(o["reserve_memory"], "--reserve-memory")

    restart_given = any(
        o[k] is not None for k in ("restart_condition", "restart_delay", "restart_max_attempts", "restart_window")
    )
    if creating or restart_given:
        if not task.HasField("restart"):
            task.restart.condition = pb.RestartPolicy.ANY
            task.restart.delay.FromSeconds(5)
        if o["restart_condition"] is not None:
            task.restart.condition = _RESTART_CONDITIONS[o["restart_condition"]]  # type: ignore[assignment]
        if o["restart_delay"] is not None:
            _dur(o["restart_delay"], "--restart-delay", task.restart, "delay")
        if o["restart_max_attempts"] is not None:
            task.restart.max_attempts = o["restart_max_attempts"]
        if o["restart_window"] is not None:
            _dur(o["restart_window"], "--restart-window", task.restart, "window")

    if o["stop_grace_period"] is not None:
        _dur(o["stop_grace_period"], "--stop-grace-period", c, "stop_grace_period")
    if o["stop_signal"] is not None:
        c.stop_signal = o["stop_signal"]
    if o["replicas_max_per_node"] is not None:
        task.placement.max_replicas = o["replicas_max_per_node"]
    _apply_health(c, o)
    for flag, field in (("workdir", "dir"), ("user", "user"), ("hostname", "hostname")):
        if o[flag] is not None:
            setattr(c, field, o[flag])
    if o["init"] is not None:
        c.init = o["init"]
    if o["tty"] is not None:
        c.tty = o["tty"]
    if o["read_only"] is not None:
        c.read_only = o["read_only"]
    if o["endpoint_mode"] is not None:
        spec.endpoint.mode = pb.EndpointSpec.DNSRR if o["endpoint_mode"] == "dnsrr" else pb.EndpointSpec.VIP

    for prefix in ("update", "rollback"):
        cfg = getattr(spec, prefix)
        given = any(
            o[f"{prefix}_{k}"] is not None
            for k in ("parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order")
        )
        if not (creating or given):
            continue
        if not spec.HasField(prefix):
            cfg.parallelism = 1
            cfg.monitor.FromSeconds(5)
        if o[f"{prefix}_parallelism"] is not None:
            cfg.parallelism = o[f"{prefix}_parallelism"]
        if o[f"{prefix}_delay"] is not None:
            _dur(o[f"{prefix}_delay"], f"--{prefix}-delay", cfg, "delay")
        if o[f"{prefix}_failure_action"] is not None:
            cfg.failure_action = _FAILURE_ACTIONS[o[f"{prefix}_failure_action"]]
        if o[f"{prefix}_monitor"] is not None:
            _dur(o[f"{prefix}_monitor"], f"--{prefix}-monitor", cfg, "monitor")
        if o[f"{prefix}_max_failure_ratio"] is not None:
            cfg.max_failure_ratio = o[f"{prefix}_max_failure_ratio"]
        if o[f"{prefix}_order"] is not None:
            cfg.order = _ORDERS[o[f"{prefix}_order"]]


def _apply_health(c: pb.ContainerSpec, o: dict[str, Any]) -> None:
    if o["no_healthcheck"] and any(
        o[k] is not None
        for k in ("health_cmd", "health_interval", "health_timeout", "health_retries", "health_start_period")
    ):
        raise click.UsageError("--no-healthcheck conflicts with --health-* options")
    if o["no_healthcheck"]:
        c.healthcheck.Clear()
        c.healthcheck.test.append("NONE")
        return
    hc = c.healthcheck
    touched = False
    if o["health_cmd"] is not None:
        del hc.test[:]
        hc.test.extend(["CMD-SHELL", o["health_cmd"]])
        touched = True
    for flag, field in (
        ("health_interval", "interval"),
        ("health_timeout", "timeout"),
        ("health_start_period", "start_period"),
    ):
        if o[flag] is not None:
            _dur(o[flag], "--" + flag.replace("_", "-"), hc, field)
            touched = True
    if o["health_retries"] is not None:
        hc.retries = o["health_retries"]
        touched = True
    if not touched and not c.healthcheck.test and not c.healthcheck.retries:
        c.ClearField("healthcheck")

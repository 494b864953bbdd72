"""Docker's ``service create``/``update`` flags and how they turn into a ServiceSpec. Pure but for click."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from typing import Any

import click

from minisw.cli.containerflags import (
    effective_caps,
    merge_env,
    parse_dns,
    parse_dns_search,
    parse_host,
    parse_kv,
    parse_mount,
    parse_ulimit,
    read_env_files,
    shell_words,
    update_caps,
    update_dns,
    update_hosts,
    update_mounts,
    update_sysctls,
    update_ulimits,
)
from minisw.cli.units import parse_cpus, parse_duration, parse_size
from minisw.proto import objects_pb2 as pb

__all__ = [
    "apply_common_flags",
    "apply_mode",
    "config_options",
    "create_options",
    "mode_options",
    "parse_network",
    "parse_networks",
    "parse_publish",
    "shell_words",
    "split_kv",
    "update_options",
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
        click.option(
            "--limit-pids",
            type=click.IntRange(min=0),
            help="Limit maximum number of processes (default 0 = unlimited)",
        ),
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
            "--health-start-interval", help="Time between running the check during the start period (ms|s|m|h)"
        ),
        click.option(
            "--no-healthcheck", is_flag=True, default=None, help="Disable any container-specified HEALTHCHECK"
        ),
        click.option("-w", "--workdir", help="Working directory inside the container"),
        click.option("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>])"),
        click.option("--hostname", help="Container hostname"),
        click.option("--entrypoint", help="Overwrite the default ENTRYPOINT of the image"),
        click.option("--cap-add", multiple=True, help="Add Linux capabilities"),
        click.option("--cap-drop", multiple=True, help="Drop Linux capabilities"),
        click.option("--log-driver", help="Logging driver for service"),
        click.option("--log-opt", multiple=True, help="Logging driver options"),
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


def _add(fn: F, opts: list[Callable[[F], F]]) -> F:
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def create_options(fn: F) -> F:
    """The container flags only ``service create`` has (update has their ``-add``/``-rm`` forms)."""
    return _add(
        fn,
        [
            click.option("--env-file", multiple=True, help="Read in a file of environment variables"),
            click.option("--mount", multiple=True, help="Attach a filesystem mount to the service"),
            click.option("--dns", multiple=True, help="Set custom DNS servers"),
            click.option("--dns-option", multiple=True, help="Set DNS options"),
            click.option("--dns-search", multiple=True, help="Set custom DNS search domains"),
            click.option("--host", multiple=True, help="Set one or more custom host-to-IP mappings (host:ip)"),
            click.option("--sysctl", multiple=True, help="Sysctl options"),
            click.option("--ulimit", multiple=True, help="Ulimit options"),
            click.option(
                "--network",
                multiple=True,
                callback=_checked_networks,
                help="Network attachments: NAME, or name=NAME,alias=ALIAS[,alias=...]",
            ),
        ],
    )


_UPDATE_FORMS = {
    "mount": ("Add or update a mount on a service", "Remove a mount by its target path"),
    "dns": ("Add or update a custom DNS server", "Remove a custom DNS server"),
    "dns-option": ("Add or update a DNS option", "Remove a DNS option"),
    "dns-search": ("Add or update a custom DNS search domain", "Remove a DNS search domain"),
    "host": ('Add a custom host-to-IP mapping ("host:ip")', 'Remove a custom host-to-IP mapping ("host:ip")'),
    "sysctl": ("Add or update a Sysctl option", "Remove a Sysctl option"),
    "ulimit": ("Add or update a ulimit option", "Remove a ulimit option"),
}


_ADD_CHECKS: dict[str, Callable[[str, str], object]] = {
    "mount": parse_mount,
    "dns": parse_dns,
    "dns-search": parse_dns_search,
    "host": parse_host,
    "sysctl": lambda v, flag: parse_kv(v, flag, "net.core.somaxconn=1024"),
    "ulimit": parse_ulimit,
}


def _checked(name: str) -> Callable[[click.Context, click.Parameter, tuple[str, ...]], tuple[str, ...]]:
    """Parse the values as click reads them, so bad input fails before the CLI calls a manager."""

    def check(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            _ADD_CHECKS[name](value, f"--{name}-add")
        return values

    return check


def update_options(fn: F) -> F:
    """``service update``'s ``--X-add``/``--X-rm`` forms of the create-only container flags."""
    opts: list[Callable[[F], F]] = []
    for name, (add_help, rm_help) in _UPDATE_FORMS.items():
        check = _checked(name) if name in _ADD_CHECKS else None
        opts.append(click.option(f"--{name}-add", multiple=True, callback=check, help=add_help))
        opts.append(click.option(f"--{name}-rm", multiple=True, help=rm_help))
    opts.append(
        click.option(
            "--network-add",
            multiple=True,
            callback=_checked_networks,
            help="Add a network: NAME, or name=NAME,alias=ALIAS[,alias=...]",
        )
    )
    opts.append(click.option("--network-rm", multiple=True, help="Remove a network (name or ID)"))
    return _add(fn, opts)


_NETWORK_LONG_FORM = "name=NETWORK[,alias=ALIAS...]"
# docker's other fields: minisw gives tasks addresses itself and its networks have no driver options.
_NETWORK_UNSUPPORTED = {
    "ip": "static IPv4 addresses are not supported for services",
    "ip6": "IPv6 is not supported",
    "driver-opt": "network driver options are not supported",
}


def parse_network(value: str, flag: str = "--network") -> pb.NetworkAttachmentConfig:
    """docker's ``--network`` value (opts.NetworkOpt): a network name or ID, or the long form
    ``name=web-net,alias=web,alias=www``. The target stays as typed: the manager resolves it."""
    attachment = pb.NetworkAttachmentConfig()
    if "=" not in value:
        attachment.target = value.strip()
    else:
        try:
            fields = next(csv.reader([value]))
        except (csv.Error, StopIteration):
            fields = []
        for field in fields:
            key, sep, val = field.partition("=")
            key, val = key.strip(), val.strip()
            if not sep or not key:
                raise click.BadParameter(
                    f'invalid field "{field}" in "{value}": use {_NETWORK_LONG_FORM}', param_hint=flag
                )
            if key == "name":
                attachment.target = val
            elif key == "alias":
                if not val:
                    raise click.BadParameter(f'empty alias in "{value}"', param_hint=flag)
                attachment.aliases.append(val)
            elif key in _NETWORK_UNSUPPORTED:
                raise click.BadParameter(f'{_NETWORK_UNSUPPORTED[key]} ("{key}" in "{value}")', param_hint=flag)
            else:
                raise click.BadParameter(
                    f'invalid field key "{key}" in "{value}": use {_NETWORK_LONG_FORM}', param_hint=flag
                )
    if not attachment.target:
        raise click.BadParameter(
            f'network name/id is not specified in "{value}": use NETWORK or {_NETWORK_LONG_FORM}', param_hint=flag
        )
    return attachment


def parse_networks(values: Sequence[str], flag: str = "--network") -> list[pb.NetworkAttachmentConfig]:
    """Every ``--network`` value, sorted by target as docker sends them."""
    return sorted((parse_network(v, flag) for v in values), key=lambda a: a.target)


def _checked_networks(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        parse_network(value, f"--{param.name.replace('_', '-')}" if param.name else "--network")
    return values


def mode_options(fn: F) -> F:
    """``service create``'s ``--mode`` and ``--max-concurrent`` (``--replicas`` is the caller's)."""
    return _add(
        fn,
        [
            click.option(
                "--mode",
                default="replicated",
                help='Service mode ("replicated", "global", "replicated-job", "global-job") (default "replicated")',
            ),
            click.option(
                "--max-concurrent",
                type=click.IntRange(min=0),
                help="Number of job tasks to run concurrently (default equal to --replicas)",
            ),
        ],
    )


def apply_mode(spec: pb.ServiceSpec, o: dict[str, Any]) -> None:
    """Set the spec's mode from ``--mode``, ``--replicas`` and ``--max-concurrent`` with docker's
    rules and texts (docker/cli service/opts.go ToServiceMode). For a replicated job ``--replicas``
    is the number of completions and ``--max-concurrent`` defaults to it; without either, the
    Engine API's defaults: max-concurrent 1, completions = max-concurrent."""
    mode, replicas, concurrent = o["mode"], o["replicas"], o["max_concurrent"]
    if mode not in ("replicated", "global", "replicated-job", "global-job"):
        raise click.UsageError(f"Unknown mode: {mode}, only replicated and global supported")
    if mode in ("global", "global-job") and replicas is not None:
        raise click.UsageError("replicas can only be used with replicated or replicated-job mode")
    if mode in ("global", "global-job") and o.get("replicas_max_per_node"):
        raise click.UsageError("replicas-max-per-node can only be used with replicated or replicated-job mode")
    if mode != "replicated-job" and concurrent is not None:
        raise click.UsageError("max-concurrent can only be used with replicated-job mode")
    if mode == "replicated":
        spec.replicated.replicas = 1 if replicas is None else replicas
    elif mode == "global":
        getattr(spec, "global").SetInParent()
    elif mode == "replicated-job":
        concurrent = (1 if replicas is None else replicas) if concurrent is None else concurrent
        spec.replicated_job.max_concurrent = concurrent
        spec.replicated_job.total_completions = concurrent if replicas is None else replicas
    else:
        spec.global_job.SetInParent()


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
    if o["limit_pids"] is not None:
        c.pids_limit = o["limit_pids"]
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
    _apply_container_flags(task, o, creating=creating)
    if o["endpoint_mode"] is not None:
        spec.endpoint.mode = pb.EndpointSpec.DNSRR if o["endpoint_mode"] == "dnsrr" else pb.EndpointSpec.VIP

    for prefix in ("update", "rollback"):
        cfg = getattr(spec, prefix)
        given = any(
            o[f"{prefix}_{k}"] is not None
            for k in ("parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order")
        )
        if spec.WhichOneof("mode") in ("replicated_job", "global_job"):
            if given:  # a job's update is a new run of it, never a rolling update
                raise click.UsageError("update and rollback configuration is not supported for jobs")
            continue
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


def _apply_container_flags(task: pb.TaskSpec, o: dict[str, Any], *, creating: bool) -> None:
    """The flags that docker's create sets outright and its update applies as changes."""
    c = task.container
    if o["entrypoint"] is not None:
        del c.command[:]
        c.command.extend(shell_words(o["entrypoint"], "--entrypoint"))
    if o["log_opt"] and not o["log_driver"]:
        raise click.UsageError(
            "--log-opt needs --log-driver: give the driver the options are for, e.g. --log-driver json-file"
        )
    if o["log_driver"]:
        task.log_driver.Clear()  # as docker's: the given options replace the old ones
        task.log_driver.name = o["log_driver"]
        for value in o["log_opt"]:
            k, v = parse_kv(value, "--log-opt", "max-size=10m")
            task.log_driver.options[k] = v
    if creating:
        env = read_env_files(o.get("env_file", ())) + list(c.env)
        del c.env[:]
        c.env.extend(merge_env(env))
        c.mounts.extend(parse_mount(v) for v in o.get("mount", ()))
        c.dns_config.SetInParent()  # docker's create always sends one, possibly empty
        c.dns_config.nameservers.extend(parse_dns(v) for v in o.get("dns", ()))
        c.dns_config.search.extend(parse_dns_search(v) for v in o.get("dns_search", ()))
        c.dns_config.options.extend(o.get("dns_option", ()))
        c.hosts.extend(parse_host(v) for v in o.get("host", ()))
        for value in o.get("sysctl", ()):
            k, v = parse_kv(value, "--sysctl", "net.core.somaxconn=1024")
            c.sysctls[k] = v
        by_name = {u.name: u for u in (parse_ulimit(v) for v in o.get("ulimit", ()))}
        c.ulimits.extend(by_name[n] for n in sorted(by_name))
        add, drop = effective_caps(o["cap_add"], o["cap_drop"])
        c.capability_add.extend(add)
        c.capability_drop.extend(drop)
        task.networks.extend(parse_networks(o.get("network", ())))
        return

    def given(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return tuple(o.get(f"{name}_add", ())), tuple(o.get(f"{name}_rm", ()))

    if any(given("mount")):
        update_mounts(c, *given("mount"))
    if any(given("dns")) or any(given("dns_search")) or any(given("dns_option")):
        update_dns(c, given("dns"), given("dns_search"), given("dns_option"))
    if any(given("host")):
        update_hosts(c, *given("host"))
    if any(given("sysctl")):
        update_sysctls(c, *given("sysctl"))
    if any(given("ulimit")):
        update_ulimits(c, *given("ulimit"))
    if o["cap_add"] or o["cap_drop"]:
        update_caps(c, o["cap_add"], o["cap_drop"])


_HEALTH_FLAGS = (
    "health_cmd",
    "health_interval",
    "health_timeout",
    "health_retries",
    "health_start_period",
    "health_start_interval",
)


def _apply_health(c: pb.ContainerSpec, o: dict[str, Any]) -> None:
    if o["no_healthcheck"] and any(o[k] is not None for k in _HEALTH_FLAGS):
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
        ("health_start_interval", "start_interval"),
    ):
        if o[flag] is not None:
            _dur(o[flag], "--" + flag.replace("_", "-"), hc, field)
            touched = True
    if o["health_retries"] is not None:
        hc.retries = o["health_retries"]
        touched = True
    if not touched and not c.healthcheck.test and not c.healthcheck.retries:
        c.ClearField("healthcheck")

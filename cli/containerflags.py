"""Docker's container flags for services (mounts, DNS, hosts, sysctls, ulimits, capabilities, env
files, shell words) and their ``*-add``/``*-rm`` update forms, with docker/cli's parsing rules. Pure
but for click's errors."""

from __future__ import annotations

import csv
import ipaddress
import os
import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

from minisw.cli.units import parse_size
from minisw.proto import objects_pb2 as pb

__all__ = [
    "effective_caps",
    "merge_env",
    "parse_dns",
    "parse_dns_search",
    "parse_host",
    "parse_kv",
    "parse_mount",
    "parse_ulimit",
    "read_env_files",
    "shell_words",
    "update_caps",
    "update_dns",
    "update_hosts",
    "update_mounts",
    "update_sysctls",
    "update_ulimits",
]

_MOUNT_TYPES = {"bind": pb.Mount.BIND, "volume": pb.Mount.VOLUME, "tmpfs": pb.Mount.TMPFS}
_PROPAGATIONS = {n.lower(): v for n, v in pb.Mount.BindOptions.Propagation.items()}
_MOUNT_BOOLS = ("readonly", "ro", "volume-nocopy")
_ULIMITS = {
    "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
    "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
}  # fmt: skip
_DOMAIN = re.compile(
    r"^((?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9]))*)\.?\s*$"
)


def shell_words(value: str, flag: str) -> list[str]:
    """``--entrypoint``/``--args``: split like a shell (docker's ShlexOpt), so quotes group words."""
    try:
        return shlex.split(value)
    except ValueError as err:
        raise click.BadParameter(
            f'invalid value "{value}": {str(err).lower()}; close the quote or escape it with \\', param_hint=flag
        ) from None


def parse_kv(value: str, flag: str, example: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not key or not sep:
        raise click.BadParameter(f'invalid value "{value}": expected KEY=VALUE, e.g. {example}', param_hint=flag)
    return key, val


# ---- --mount ----------------------------------------------------------------------------------
def _mount_bool(key: str, val: str | None, hint: str) -> bool:
    if val is None:
        return True
    if val in ("1", "true"):
        return True
    if val in ("0", "false"):
        return False
    raise click.BadParameter(
        f"invalid value for '{key}': invalid boolean value (\"{val}\"): "
        'must be one of "true", "1", "false", or "0" (default "true")',
        param_hint=hint,
    )


def parse_mount(value: str, flag: str = "--mount") -> pb.Mount:
    """``type=bind,source=/srv,target=/data,readonly`` (docker's MountOpt; the type defaults to volume)."""
    value = value.strip()
    if not value:
        raise click.BadParameter("value is empty", param_hint=flag)
    try:
        fields = next(csv.reader([value]))
    except csv.Error as err:
        raise click.BadParameter(f'invalid mount "{value}": {err}', param_hint=flag) from None
    m = pb.Mount(type=pb.Mount.VOLUME)
    kind = "volume"
    for field in fields:
        key, sep, raw = field.partition("=")
        val = raw if sep else None
        if key.strip() != key:
            raise click.BadParameter(
                f"invalid option '{key.strip()}' in '{field}': option should not have whitespace", param_hint=flag
            )
        if val is not None:
            if not val.strip():
                raise click.BadParameter(f"invalid value for '{key}': value is empty", param_hint=flag)
            if val.strip() != val:
                raise click.BadParameter(
                    f"invalid value for '{key}' in '{field}': value should not have whitespace", param_hint=flag
                )
        key = key.lower()
        if val is None and key not in _MOUNT_BOOLS:
            raise click.BadParameter(f"invalid field '{field}' must be a key=value pair", param_hint=flag)
        if key == "type":
            kind = (val or "").lower()
            if kind not in _MOUNT_TYPES:
                raise click.BadParameter(f'invalid mount type "{val}": use bind, volume or tmpfs', param_hint=flag)
            m.type = _MOUNT_TYPES[kind]
        elif key in ("source", "src"):
            assert val is not None
            # docker makes ./relative sources absolute against the client's working directory
            m.source = os.path.abspath(val) if val.startswith(".") else val
        elif key in ("target", "dst", "destination"):
            m.target = val or ""
        elif key in ("readonly", "ro"):
            m.readonly = _mount_bool(key, val, flag)
        elif key == "consistency":
            pass  # macOS only; Linux engines ignore it, and so does swarmkit's executor
        elif key == "bind-propagation":
            prop = (val or "").lower()
            if prop not in _PROPAGATIONS:
                raise click.BadParameter(
                    f"invalid value for {key}: {val} (use one of {', '.join(_PROPAGATIONS)})", param_hint=flag
                )
            m.bind_options.propagation = _PROPAGATIONS[prop]  # type: ignore[assignment]
        elif key == "volume-nocopy":
            m.volume_options.nocopy = _mount_bool(key, val, flag)
        elif key == "volume-label":
            k, _, v = (val or "").partition("=")
            if k:
                m.volume_options.labels[k] = v
        elif key == "volume-driver":
            m.volume_options.driver_config.name = val or ""
        elif key == "volume-opt":
            k, _, v = (val or "").partition("=")
            if k:
                m.volume_options.driver_config.options[k] = v
        elif key == "tmpfs-size":
            try:
                m.tmpfs_options.size_bytes = parse_size(val or "", flag)
            except click.BadParameter:
                raise click.BadParameter(f"invalid value for {key}: {val}", param_hint=flag) from None
        elif key == "tmpfs-mode":
            try:
                m.tmpfs_options.mode = int(val or "", 8)
            except ValueError:
                raise click.BadParameter(
                    f"invalid value for {key}: {val} (an octal mode like 1770)", param_hint=flag
                ) from None
        else:
            raise click.BadParameter(f"unknown option '{key}' in '{field}'", param_hint=flag)
    for prefix, option in (("bind", "bind_options"), ("volume", "volume_options"), ("tmpfs", "tmpfs_options")):
        if m.HasField(option) and kind != prefix:  # type: ignore[arg-type]
            raise click.BadParameter(f"cannot mix '{prefix}-*' options with mount type '{kind}'", param_hint=flag)
    return m


def update_mounts(c: pb.ContainerSpec, add: Sequence[str], rm: Sequence[str]) -> None:
    """``--mount-add`` replaces the mount on the same target; ``--mount-rm`` takes targets (docker's updateMounts)."""
    by_target: dict[str, pb.Mount] = {}
    for value in add:
        m = parse_mount(value, "--mount-add")
        if m.target in by_target:
            raise click.BadParameter(f'duplicate mount target "{m.target}"', param_hint="--mount-add")
        by_target[m.target] = m
    for m in c.mounts:
        by_target.setdefault(m.target, m)
    kept = [m for m in by_target.values() if m.target not in set(rm)]
    kept.sort(key=lambda m: (m.source, m.target))
    del c.mounts[:]
    c.mounts.extend(kept)


# ---- --ulimit ---------------------------------------------------------------------------------
def parse_ulimit(value: str, flag: str = "--ulimit") -> pb.ContainerSpec.Ulimit:
    """``nofile=1024:2048`` or ``nproc=512`` (soft[:hard]; hard defaults to soft; -1 is unlimited)."""
    name, sep, limits = value.partition("=")
    if not sep:
        raise click.BadParameter(
            f"invalid ulimit argument: {value} (use NAME=SOFT[:HARD], e.g. nofile=1024:2048)", param_hint=flag
        )
    if name not in _ULIMITS:
        raise click.BadParameter(
            f"invalid ulimit type: {name} (use one of {', '.join(sorted(_ULIMITS))})", param_hint=flag
        )
    parts = limits.split(":")
    if len(parts) > 2:
        raise click.BadParameter(
            f"too many limit value arguments - {limits}, can only have up to two, `soft[:hard]`", param_hint=flag
        )
    try:
        soft = int(parts[0])
        hard = int(parts[1]) if len(parts) == 2 else soft
    except ValueError:
        raise click.BadParameter(
            f'invalid ulimit value "{limits}": use whole numbers SOFT[:HARD], e.g. 1024:2048', param_hint=flag
        ) from None
    if hard != -1 and soft > hard:
        raise click.BadParameter(
            f"ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}", param_hint=flag
        )
    return pb.ContainerSpec.Ulimit(name=name, soft=soft, hard=hard)


def update_ulimits(c: pb.ContainerSpec, add: Sequence[str], rm: Sequence[str]) -> None:
    by_name = {u.name: u for u in c.ulimits}
    for value in rm:
        by_name.pop(value.partition("=")[0], None)
    for value in add:
        u = parse_ulimit(value, "--ulimit-add")
        by_name[u.name] = u
    del c.ulimits[:]
    c.ulimits.extend(by_name[n] for n in sorted(by_name))


# ---- --sysctl ---------------------------------------------------------------------------------
def update_sysctls(c: pb.ContainerSpec, add: Sequence[str], rm: Sequence[str]) -> None:
    for value in rm:
        c.sysctls.pop(value.partition("=")[0], None)
    for value in add:
        k, v = parse_kv(value, "--sysctl-add", "net.core.somaxconn=1024")
        c.sysctls[k] = v


# ---- --dns, --dns-search, --dns-option --------------------------------------------------------
def parse_dns(value: str, flag: str = "--dns") -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise click.BadParameter(
            f"IP address is not correctly formatted: {value} (give a name server's address, e.g. 10.0.0.2)",
            param_hint=flag,
        ) from None


def parse_dns_search(value: str, flag: str = "--dns-search") -> str:
    value = value.strip(" ")
    if value == ".":
        return value
    m = _DOMAIN.match(value)
    if not re.search(r"[a-zA-Z]", value) or not m or len(m.group(1)) >= 255:
        raise click.BadParameter(f"{value} is not a valid domain (e.g. example.com)", param_hint=flag)
    return m.group(1)  # without the trailing dot, as docker stores it


def _merge(current: Iterable[str], add: Iterable[str], rm: Iterable[str], key: Callable[[str], Any] = str) -> list[str]:
    out = list(dict.fromkeys([*current, *add]))
    drop = set(rm)
    return sorted((v for v in out if v not in drop), key=key)


def update_dns(
    c: pb.ContainerSpec,
    servers: tuple[Sequence[str], Sequence[str]],
    search: tuple[Sequence[str], Sequence[str]],
    options: tuple[Sequence[str], Sequence[str]],
) -> None:
    """Each list: add, drop duplicates, remove, sort (so an unchanged list does not dirty tasks)."""
    d = c.dns_config
    new_servers = _merge(
        d.nameservers,
        [parse_dns(v, "--dns-add") for v in servers[0]],
        servers[1],
        key=lambda s: (ipaddress.ip_address(s).version, ipaddress.ip_address(s)),
    )
    new_search = _merge(d.search, [parse_dns_search(v, "--dns-search-add") for v in search[0]], search[1])
    new_options = _merge(d.options, options[0], options[1])
    c.dns_config.CopyFrom(pb.ContainerSpec.DNSConfig(nameservers=new_servers, search=new_search, options=new_options))


# ---- --host -----------------------------------------------------------------------------------
def parse_host(value: str, flag: str = "--host") -> str:
    """``host:ip`` (or ``host=ip``) -> swarmkit's ``ip host`` (the /etc/hosts order)."""
    host, sep, ip = value.partition("=")
    if not sep:
        host, sep, ip = value.partition(":")
    if not sep or not host or ":" in host:
        raise click.BadParameter(f'bad format for add-host: "{value}" (use HOST:IP, e.g. db:10.0.0.5)', param_hint=flag)
    if ip != "host-gateway":
        bare = ip[1:-1] if len(ip) > 2 and ip[0] == "[" and ip[-1] == "]" else ip
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            raise click.BadParameter(f'invalid IP address in add-host: "{ip}"', param_hint=flag) from None
        ip = bare
    return f"{ip} {host}"


def update_hosts(c: pb.ContainerSpec, add: Sequence[str], rm: Sequence[str]) -> None:
    """docker's updateHosts: ``--host-rm host`` drops the name everywhere, ``host:ip`` only from that IP."""
    removals = [(h, ip) for h, _, ip in (v.partition(":") for v in rm)]
    kept: list[str] = []
    for entry in c.hosts:
        parts = entry.split()
        if not parts:
            continue
        ip, names = parts[0], parts[1:]
        for host, rm_ip in removals:
            if not rm_ip or rm_ip == ip:
                names = [n for n in names if n != host]
        if names:
            kept.append(" ".join([ip, *names]))
    kept += [parse_host(v, "--host-add") for v in add]
    del c.hosts[:]
    c.hosts.extend(dict.fromkeys(kept))


# ---- --cap-add, --cap-drop --------------------------------------------------------------------
def _normalize_cap(cap: str) -> str:
    cap = cap.strip().upper()
    if cap in ("ALL", "RESET") or cap.startswith("CAP_"):
        return cap
    return "CAP_" + cap


def _caps_list(caps: set[str]) -> list[str]:
    return ["ALL"] if "ALL" in caps else sorted(caps)


def effective_caps(add: Sequence[str], drop: Sequence[str]) -> tuple[list[str], list[str]]:
    """``service create``: adding wins over dropping the same capability; ALL trumps the rest."""
    add_set = {_normalize_cap(c) for c in add} - {"RESET"}
    drop_set = {_normalize_cap(c) for c in drop} - {"RESET"}
    return _caps_list(add_set), _caps_list(drop_set - add_set)


def update_caps(c: pb.ContainerSpec, add: Sequence[str], drop: Sequence[str]) -> None:
    """``service update``: a tri-state. Adding a dropped capability un-drops it (and vice versa);
    RESET clears the list first. Lists stay sorted so an unchanged set does not dirty tasks."""
    cur_add = {_normalize_cap(x) for x in c.capability_add}
    cur_drop = {_normalize_cap(x) for x in c.capability_drop}
    to_add = {_normalize_cap(x) for x in add}
    to_drop = {_normalize_cap(x) for x in drop}
    if "RESET" in to_add:
        cur_add, to_add = set(), to_add - {"RESET"}
    if "RESET" in to_drop:
        cur_drop, to_drop = set(), to_drop - {"RESET"}
    for cap in to_drop - to_add:
        if cap in cur_add:
            cur_add.discard(cap)
        else:
            cur_drop.add(cap)
    for cap in to_add:
        if cap in cur_drop:
            cur_drop.discard(cap)
        else:
            cur_add.add(cap)
    del c.capability_add[:]
    c.capability_add.extend(_caps_list(cur_add))
    del c.capability_drop[:]
    c.capability_drop.extend(_caps_list(cur_drop))


# ---- --env-file -------------------------------------------------------------------------------
def read_env_files(paths: Sequence[str]) -> list[str]:
    """docker's env files: KEY=VALUE lines as they are; a bare KEY takes the client's environment
    value (or is left out); blank lines and ``#`` comments are skipped."""
    out: list[str] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8-sig") as fh:
                lines = fh.read().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise click.BadParameter(
                f"cannot read env file {path}: {getattr(err, 'strerror', None) or err}", param_hint="--env-file"
            ) from None
        for line in lines:
            line = line.lstrip()
            if not line or line.startswith("#"):
                continue
            key, sep, _ = line.partition("=")
            if not key:
                raise click.BadParameter(
                    f"invalid env file ({path}): no variable name on line '{line}'", param_hint="--env-file"
                )
            if any(ch in key for ch in " \t"):
                raise click.BadParameter(
                    f"invalid env file ({path}): variable '{key}' contains whitespaces", param_hint="--env-file"
                )
            if sep:
                out.append(line)
            elif key in os.environ:
                out.append(f"{key}={os.environ[key]}")
    return out


def merge_env(values: Sequence[str]) -> list[str]:
    """Later values of a key replace earlier ones, at the end (docker's makeEnv)."""
    out: list[str] = []
    for env in values:
        if env in out:
            continue
        key = env.partition("=")[0]
        out = [e for e in out if not e.startswith(key + "=")]
        out.append(env)
    return out

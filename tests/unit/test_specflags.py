"""Parsing of docker's container flags for ``service create``/``update`` and their update forms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from minisw.cli.containerflags import update_mounts
from minisw.cli.inspect_pretty import pretty_service
from minisw.cli.main import cli
from minisw.cli.specflags import apply_common_flags, config_options, create_options, update_options
from minisw.manager.controlapi.validate import validate_service_spec
from minisw.manager.errors import InvalidArgument
from minisw.proto import objects_pb2 as pb
from minisw.proto.engine import service_json
from minisw.proto.model import is_task_dirty

from minisw.agent.exec.spec import create_kwargs  # isort: skip


def _base() -> pb.ServiceSpec:
    spec = pb.ServiceSpec()
    spec.annotations.name = "web"
    spec.task.container.image = "minisw/web:1"
    spec.replicated.replicas = 1
    return spec


def create_spec(*args: str) -> pb.ServiceSpec:
    """The spec that ``service create ARGS`` builds, through the real flag decorators."""
    out: list[pb.ServiceSpec] = []

    @click.command()
    @config_options
    @create_options
    def fake_create(**o: Any) -> None:
        spec = _base()
        apply_common_flags(spec, o, creating=True)
        out.append(spec)

    result = CliRunner().invoke(fake_create, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out[0]


def update_spec(current: pb.ServiceSpec, *args: str) -> pb.ServiceSpec:
    out: list[pb.ServiceSpec] = []

    @click.command()
    @config_options
    @update_options
    def fake_update(**o: Any) -> None:
        spec = pb.ServiceSpec()
        spec.CopyFrom(current)
        apply_common_flags(spec, o, creating=False)
        out.append(spec)

    result = CliRunner().invoke(fake_update, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out[0]


def cli_error(*args: str) -> str:
    """Run the real CLI against an address where no manager listens: bad input must fail first."""
    result = CliRunner().invoke(cli, ["--host", "127.0.0.1:1", *args])
    assert result.exit_code != 0
    assert "127.0.0.1:1" not in result.output, result.output  # never got as far as calling a manager
    return result.output


def test_mounts_bind_volume_tmpfs() -> None:
    spec = create_spec(
        "--mount",
        "type=bind,source=/srv/data,target=/data,readonly",
        "--mount",
        "src=cache,dst=/cache,volume-label=a=b,volume-driver=local,volume-opt=o=bind",
        "--mount",
        "type=tmpfs,target=/run/t,tmpfs-size=64m,tmpfs-mode=1770",
        "--mount",
        "type=bind,src=/etc,dst=/host-etc,bind-propagation=rslave,ro=false",
    )
    bind, volume, tmpfs, slave = spec.task.container.mounts
    assert (bind.type, bind.source, bind.target, bind.readonly) == (pb.Mount.BIND, "/srv/data", "/data", True)
    assert not bind.HasField("bind_options")
    assert (volume.type, volume.source, volume.target) == (pb.Mount.VOLUME, "cache", "/cache")
    assert dict(volume.volume_options.labels) == {"a": "b"}
    assert volume.volume_options.driver_config.name == "local"
    assert dict(volume.volume_options.driver_config.options) == {"o": "bind"}
    assert (tmpfs.type, tmpfs.tmpfs_options.size_bytes, tmpfs.tmpfs_options.mode) == (
        pb.Mount.TMPFS,
        64 * 1024 * 1024,
        0o1770,
    )
    assert slave.bind_options.propagation == pb.Mount.BindOptions.RSLAVE and not slave.readonly
    validate_service_spec(spec)


def test_relative_bind_source_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = create_spec("--mount", "type=bind,source=./site,target=/site")
    assert spec.task.container.mounts[0].source == str(tmp_path / "site")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "value is empty"),
        ("type=bind,source=/a,target", "invalid field 'target' must be a key=value pair"),
        ("type=bind,source=,target=/a", "invalid value for 'source': value is empty"),
        ("type=nfs,target=/a", 'invalid mount type "nfs"'),
        ("type=bind,src=/a,dst=/b,color=red", "unknown option 'color' in 'color=red'"),
        ("type=volume,src=a,dst=/b,bind-propagation=rshared", "cannot mix 'bind-*' options with mount type 'volume'"),
        ("type=tmpfs,dst=/b,tmpfs-mode=999", "invalid value for tmpfs-mode: 999"),
        ("type=bind,src=/a,dst=/b,readonly=yes", "invalid boolean value"),
        ("type=bind,src=/a,dst=/b,bind-propagation=sideways", "invalid value for bind-propagation: sideways"),
    ],
)
def test_bad_mounts_are_refused_by_the_cli(value: str, message: str) -> None:
    assert message in cli_error("service", "create", "--mount", value, "minisw/web:1")


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        (pb.Mount(type=pb.Mount.BIND, source="/a", target="data"), "invalid mount target, must be an absolute path"),
        (pb.Mount(type=pb.Mount.BIND, source="a", target="/data"), "invalid bind mount source, must be an absolute"),
        (pb.Mount(type=pb.Mount.VOLUME, source="/a", target="/data"), "invalid volume mount source, must not be"),
        (pb.Mount(type=pb.Mount.TMPFS, source="x", target="/data"), "invalid tmpfs source, source must be empty"),
    ],
)
def test_bad_mounts_are_refused_by_the_manager(mount: pb.Mount, message: str) -> None:
    spec = _base()
    spec.task.container.mounts.append(mount)
    with pytest.raises(InvalidArgument, match=message):
        validate_service_spec(spec)


def test_duplicate_mount_targets_are_refused() -> None:
    spec = create_spec("--mount", "type=volume,src=a,dst=/d", "--mount", "type=volume,src=b,dst=/d")
    with pytest.raises(InvalidArgument, match="ContainerSpec: duplicate mount point: /d"):
        validate_service_spec(spec)


def test_dns_hosts_sysctls_ulimits_caps_and_the_rest() -> None:
    spec = create_spec(
        "--dns", "10.0.0.2", "--dns", "::1",
        "--dns-search", "example.com", "--dns-option", "ndots:2",
        "--host", "db:10.0.0.5", "--host", "cache=10.0.0.6",
        "--sysctl", "net.core.somaxconn=1024",
        "--ulimit", "nofile=1024:2048", "--ulimit", "nproc=512",
        "--cap-add", "net_admin", "--cap-add", "CAP_SYS_TIME", "--cap-drop", "chown", "--cap-drop", "net_admin",
        "--limit-pids", "100", "--init", "--read-only", "--stop-signal", "SIGINT", "--hostname", "h1",
        "--log-driver", "json-file", "--log-opt", "max-size=10m",
        "--health-cmd", "true", "--health-start-interval", "2s",
    )  # fmt: skip
    c = spec.task.container
    assert list(c.dns_config.nameservers) == ["10.0.0.2", "::1"]
    assert list(c.dns_config.search) == ["example.com"]
    assert list(c.dns_config.options) == ["ndots:2"]
    assert list(c.hosts) == ["10.0.0.5 db", "10.0.0.6 cache"]
    assert dict(c.sysctls) == {"net.core.somaxconn": "1024"}
    assert [(u.name, u.soft, u.hard) for u in c.ulimits] == [("nofile", 1024, 2048), ("nproc", 512, 512)]
    assert list(c.capability_add) == ["CAP_NET_ADMIN", "CAP_SYS_TIME"]  # adding wins over dropping
    assert list(c.capability_drop) == ["CAP_CHOWN"]
    assert (c.pids_limit, c.init, c.read_only, c.stop_signal, c.hostname) == (100, True, True, "SIGINT", "h1")
    assert spec.task.log_driver.name == "json-file" and dict(spec.task.log_driver.options) == {"max-size": "10m"}
    assert c.healthcheck.start_interval.ToSeconds() == 2
    validate_service_spec(spec)

    kwargs = create_kwargs(pb.Task(id="t", spec=spec.task, slot=1), "")
    assert kwargs["dns"] == ["10.0.0.2", "::1"] and kwargs["dns_search"] == ["example.com"]
    assert kwargs["dns_opt"] == ["ndots:2"]
    assert kwargs["extra_hosts"] == ["db:10.0.0.5", "cache:10.0.0.6"]
    assert kwargs["ulimits"] == [
        {"name": "nofile", "soft": 1024, "hard": 2048},
        {"name": "nproc", "soft": 512, "hard": 512},
    ]
    assert (kwargs["cap_add"], kwargs["cap_drop"], kwargs["pids_limit"]) == (
        ["CAP_NET_ADMIN", "CAP_SYS_TIME"],
        ["CAP_CHOWN"],
        100,
    )
    assert kwargs["log_config"] == {"type": "json-file", "config": {"max-size": "10m"}}

    svc = pb.Service(id="s", spec=spec)
    out = service_json(svc)["Spec"]["TaskTemplate"]
    cs = out["ContainerSpec"]
    assert cs["DNSConfig"] == {"Nameservers": ["10.0.0.2", "::1"], "Search": ["example.com"], "Options": ["ndots:2"]}
    assert cs["Hosts"] == ["10.0.0.5 db", "10.0.0.6 cache"]
    assert cs["Ulimits"][0] == {"Name": "nofile", "Hard": 2048, "Soft": 1024}
    assert cs["Healthcheck"]["StartInterval"] == 2_000_000_000
    assert out["Resources"]["Limits"] == {"Pids": 100}
    assert out["LogDriver"] == {"Name": "json-file", "Options": {"max-size": "10m"}}
    json.dumps(out)

    pretty = pretty_service(svc)
    for line in (
        "Capabilities:\n Add: CAP_NET_ADMIN, CAP_SYS_TIME\n Drop: CAP_CHOWN\n",
        "SysCtls:\n net.core.somaxconn: 1024\n",
        "Ulimits:\n nofile: 1024:2048\n nproc: 512:512\n",
        "Log Driver:\n Name:\t\tjson-file\n LogOpts:\n  max-size:       10m\n\n",
        " Limits:\n  PIDs:\t\t100\n",
    ):
        assert line.expandtabs(8) in pretty, pretty


def test_pretty_mounts_block() -> None:
    svc = pb.Service(id="s", spec=create_spec("--mount", "type=bind,src=/srv,dst=/data,ro"))
    block = "Mounts:\n Target:\t/data\n  Source:\t/srv\n  ReadOnly:\ttrue\n  Type:\t\tbind\n"
    assert block.expandtabs(8) in pretty_service(svc)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dns", "10.0.0.300"], "IP address is not correctly formatted: 10.0.0.300"),
        (["--dns-search", "-bad-.com"], "-bad-.com is not a valid domain"),
        (["--host", "db"], 'bad format for add-host: "db"'),
        (["--host", "db:not-an-ip"], 'invalid IP address in add-host: "not-an-ip"'),
        (["--ulimit", "nofile"], "invalid ulimit argument: nofile"),
        (["--ulimit", "files=10"], "invalid ulimit type: files"),
        (["--ulimit", "nofile=2048:1024"], "ulimit soft limit must be less than or equal to hard limit: 2048 > 1024"),
        (["--ulimit", "nofile=1:2:3"], "too many limit value arguments"),
        (["--ulimit", "nofile=lots"], 'invalid ulimit value "lots"'),
        (["--sysctl", "net.core.somaxconn"], "expected KEY=VALUE"),
        (["--log-opt", "max-size=1m"], "--log-opt needs --log-driver"),
        (["--limit-pids", "-1"], "-1"),
        (["--entrypoint", "sh -c 'echo"], "no closing quotation"),
        (["--env-file", "/nonexistent/env"], "cannot read env file /nonexistent/env"),
    ],
)
def test_bad_container_flags_are_refused(args: list[str], message: str) -> None:
    assert message in cli_error("service", "create", *args, "minisw/web:1")


def test_update_refuses_bad_input_before_calling_a_manager() -> None:
    assert "invalid ulimit type: x" in cli_error("service", "update", "--ulimit-add", "x=1", "web")
    assert "invalid mount type" in cli_error("service", "update", "--mount-add", "type=nfs,dst=/x", "web")


def test_entrypoint_and_args_split_like_a_shell() -> None:
    spec = create_spec("--entrypoint", "sh -c 'echo \"hello world\"; sleep 1'")
    assert list(spec.task.container.command) == ["sh", "-c", 'echo "hello world"; sleep 1']
    spec = update_spec(spec, "--entrypoint", "/bin/busybox  httpd -f")
    assert list(spec.task.container.command) == ["/bin/busybox", "httpd", "-f"]
    assert list(update_spec(spec, "--entrypoint", "").task.container.command) == []


def test_env_file_then_env_later_values_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / "env"
    env.write_text("\ufeff# comment\nA=1\n\n  B=two words \nFROM_CLIENT\nUNSET_HERE\n")
    monkeypatch.setenv("FROM_CLIENT", "yes")
    monkeypatch.delenv("UNSET_HERE", raising=False)

    out: list[pb.ServiceSpec] = []

    @click.command()
    @click.option("-e", "--env", multiple=True)
    @config_options
    @create_options
    def fake_create(**o: Any) -> None:
        spec = _base()
        spec.task.container.env.extend(o.pop("env"))
        apply_common_flags(spec, o, creating=True)
        out.append(spec)

    result = CliRunner().invoke(fake_create, ["--env-file", str(env), "-e", "A=3", "-e", "C=4"])
    assert result.exit_code == 0, result.output
    assert list(out[0].task.container.env) == ["B=two words ", "FROM_CLIENT=yes", "A=3", "C=4"]


def test_update_forms() -> None:
    spec = create_spec(
        "--mount", "type=volume,src=a,dst=/a",
        "--mount", "type=volume,src=b,dst=/b",
        "--dns", "10.0.0.2", "--dns-search", "a.example", "--dns-option", "ndots:2",
        "--host", "db:10.0.0.5", "--host", "db:10.0.0.7",
        "--sysctl", "net.a=1", "--sysctl", "net.b=2",
        "--ulimit", "nofile=1024", "--ulimit", "nproc=10",
        "--cap-add", "NET_ADMIN", "--cap-drop", "CHOWN",
    )  # fmt: skip
    new = update_spec(
        spec,
        "--mount-add", "type=tmpfs,dst=/a",
        "--mount-rm", "/b",
        "--dns-add", "10.0.0.1", "--dns-rm", "10.0.0.2",
        "--dns-search-add", "b.example", "--dns-option-rm", "ndots:2",
        "--host-rm", "db:10.0.0.5", "--host-add", "cache:10.0.0.6",
        "--sysctl-add", "net.b=3", "--sysctl-rm", "net.a",
        "--ulimit-add", "nofile=2048:4096", "--ulimit-rm", "nproc",
        "--cap-add", "CHOWN", "--cap-drop", "NET_ADMIN", "--cap-add", "SYS_TIME",
    )  # fmt: skip
    c = new.task.container
    assert [(m.type, m.target) for m in c.mounts] == [(pb.Mount.TMPFS, "/a")]
    assert list(c.dns_config.nameservers) == ["10.0.0.1"]
    assert list(c.dns_config.search) == ["a.example", "b.example"]
    assert list(c.dns_config.options) == []
    assert list(c.hosts) == ["10.0.0.7 db", "10.0.0.6 cache"]
    assert dict(c.sysctls) == {"net.b": "3"}
    assert [(u.name, u.soft, u.hard) for u in c.ulimits] == [("nofile", 2048, 4096)]
    # tri-state: adding a dropped capability un-drops it, dropping an added one un-adds it
    assert (list(c.capability_add), list(c.capability_drop)) == (["CAP_SYS_TIME"], [])

    assert list(update_spec(new, "--host-rm", "db").task.container.hosts) == ["10.0.0.6 cache"]
    assert list(update_spec(new, "--cap-add", "RESET").task.container.capability_add) == []


def test_duplicate_mount_add_targets_are_refused() -> None:
    with pytest.raises(click.BadParameter, match='duplicate mount target "/x"'):
        update_mounts(pb.ContainerSpec(), ["type=volume,dst=/x", "type=tmpfs,dst=/x"], [])


def test_update_without_changes_keeps_the_task_spec() -> None:
    spec = create_spec("--dns", "10.0.0.2", "--cap-add", "NET_ADMIN", "--ulimit", "nofile=5")
    again = update_spec(spec, "--dns-add", "10.0.0.2", "--cap-add", "NET_ADMIN", "--ulimit-add", "nofile=5")
    assert again.task == spec.task


def test_a_container_flag_change_dirties_tasks() -> None:
    spec = create_spec("--mount", "type=volume,src=a,dst=/a")
    service = pb.Service(id="s", spec=spec, spec_version=pb.Version(index=1))
    task = pb.Task(id="t", spec=spec.task, spec_version=pb.Version(index=1))
    for args in (["--mount-rm", "/a"], ["--dns-add", "10.0.0.9"], ["--log-driver", "none"], ["--limit-pids", "5"]):
        changed = pb.Service(id="s", spec=update_spec(spec, *args), spec_version=pb.Version(index=2))
        assert is_task_dirty(changed, task, None), args
    assert not is_task_dirty(service, task, None)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.hosts.append("db"), "invalid host entry"),
        (lambda c: c.ulimits.append(pb.ContainerSpec.Ulimit(name="nofile", soft=5, hard=2)), "soft limit"),
        (lambda c: c.healthcheck.start_interval.FromNanoseconds(10), "health-start-interval"),
    ],
)
def test_manager_refuses_bad_container_values(mutate: Any, message: str) -> None:
    spec = _base()
    mutate(spec.task.container)
    with pytest.raises(InvalidArgument, match=message):
        validate_service_spec(spec)

"""Docker's container flags end to end: ``service create`` with mounts, DNS, hosts, capabilities,
sysctls, ulimits, limits, init, read-only, stop signal, log driver and a quoted entrypoint gives a
real container configured so (Docker's own inspect), and ``service update``'s ``*-add``/``*-rm``
forms give the replacement task's container the changed configuration."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support.cluster import Cluster, containers, poll_until

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def running_container(c: Cluster, service: str) -> dict[str, Any]:
    """Docker's inspect of the one running task's container."""
    tasks = poll_until(lambda: c.running_tasks(service) or None, 60, what=f"{service} running")
    assert len(tasks) == 1
    client = docker.from_env()
    try:
        return client.api.inspect_container(tasks[0].status.container.container_id)  # type: ignore[no-any-return]
    finally:
        client.close()


def mounts_by_target(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["Target"]: m for m in info["HostConfig"].get("Mounts") or []}


def test_create_and_update_container_flags(cluster_factory: type, tmp_path: Path) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    c.add_agent()
    site = tmp_path / "site"
    site.mkdir()
    env_file = tmp_path / "env"
    env_file.write_text("# settings\nFROM_FILE=1\nBOTH=file\n")
    volume = f"minisw-it-{uuid.uuid4().hex[:10]}"
    try:
        c.cli_ok(
            "service", "create", "--name", "flags", "--restart-delay", "1s", "-d",
            "--entrypoint", "/bin/sh -c 'exec /init'",
            "--env-file", str(env_file), "-e", "BOTH=flag",
            "--mount", f"type=bind,source={site},target=/site,readonly",
            "--mount", f"type=volume,source={volume},target=/data",
            "--mount", "type=tmpfs,target=/www,tmpfs-size=16m",
            "--dns", "10.0.0.2", "--dns-search", "example.com", "--dns-option", "ndots:2",
            "--host", "db:10.0.0.5", "--hostname", "flagged",
            "--cap-add", "net_admin", "--cap-drop", "MKNOD",
            "--sysctl", "net.core.somaxconn=1024",
            "--ulimit", "nofile=1024:2048",
            "--limit-pids", "100", "--init", "--read-only", "--stop-signal", "SIGINT",
            "--log-driver", "json-file", "--log-opt", "max-size=10m",
            "minisw/web:1",
        )  # fmt: skip
        info = running_container(c, "flags")
        cfg, host = info["Config"], info["HostConfig"]
        assert cfg["Entrypoint"] == ["/bin/sh", "-c", "exec /init"]  # the quotes group words
        assert "FROM_FILE=1" in cfg["Env"] and "BOTH=flag" in cfg["Env"] and "BOTH=file" not in cfg["Env"]
        assert cfg["Hostname"] == "flagged"
        assert cfg["StopSignal"] == "SIGINT"
        mounts = mounts_by_target(info)
        assert set(mounts) == {"/site", "/data", "/www"}
        assert mounts["/site"]["Type"] == "bind" and mounts["/site"]["Source"] == str(site)
        assert mounts["/site"]["ReadOnly"] is True
        assert mounts["/data"]["Type"] == "volume" and mounts["/data"]["Source"] == volume
        assert mounts["/www"]["Type"] == "tmpfs" and mounts["/www"]["TmpfsOptions"]["SizeBytes"] == 16 * 1024 * 1024
        assert host["Dns"] == ["10.0.0.2"]
        assert host["DnsSearch"] == ["example.com"]
        assert host["DnsOptions"] == ["ndots:2"]
        assert host["ExtraHosts"] == ["db:10.0.0.5"]
        assert host["CapAdd"] == ["CAP_NET_ADMIN"] and host["CapDrop"] == ["CAP_MKNOD"]
        assert host["Sysctls"] == {"net.core.somaxconn": "1024"}
        assert host["Ulimits"] == [{"Name": "nofile", "Hard": 2048, "Soft": 1024}]
        assert host["PidsLimit"] == 100
        assert host["Init"] is True
        assert host["ReadonlyRootfs"] is True
        assert host["LogConfig"]["Type"] == "json-file"
        assert host["LogConfig"]["Config"]["max-size"] == "10m"  # beside the daemon's own defaults

        spec = c.cli_json("service", "inspect", "flags")[0]["Spec"]["TaskTemplate"]
        assert spec["ContainerSpec"]["Hosts"] == ["10.0.0.5 db"]
        assert spec["Resources"]["Limits"]["Pids"] == 100
        assert spec["LogDriver"] == {"Name": "json-file", "Options": {"max-size": "10m"}}

        old_id = info["Id"]
        c.cli_ok(
            "service", "update", "-d",
            "--mount-rm", "/site", "--mount-add", "type=tmpfs,target=/cache",
            "--dns-add", "10.0.0.3", "--dns-rm", "10.0.0.2", "--dns-search-rm", "example.com",
            "--host-add", "cache:10.0.0.6", "--host-rm", "db",
            "--cap-drop", "NET_ADMIN", "--cap-add", "SYS_TIME",
            "--sysctl-add", "net.core.somaxconn=2048",
            "--ulimit-add", "nproc=500", "--ulimit-rm", "nofile",
            "--args", "'first arg' second",
            "flags",
        )  # fmt: skip

        def replaced() -> dict[str, Any] | None:
            found = running_container(c, "flags")
            return found if found["Id"] != old_id else None

        info = poll_until(replaced, 60, what="the updated task's container")
        cfg, host = info["Config"], info["HostConfig"]
        assert set(mounts_by_target(info)) == {"/data", "/www", "/cache"}
        assert host["Dns"] == ["10.0.0.3"]
        assert not host.get("DnsSearch")
        assert host["DnsOptions"] == ["ndots:2"]
        assert host["ExtraHosts"] == ["cache:10.0.0.6"]
        assert host["CapAdd"] == ["CAP_SYS_TIME"]  # dropping an added capability un-adds it
        assert host["CapDrop"] == ["CAP_MKNOD"]
        assert host["Sysctls"] == {"net.core.somaxconn": "2048"}
        assert host["Ulimits"] == [{"Name": "nproc", "Hard": 500, "Soft": 500}]
        assert cfg["Cmd"] == ["first arg", "second"]
        assert cfg["Entrypoint"] == ["/bin/sh", "-c", "exec /init"]

        # A bad mount is refused by the manager and changes nothing.
        bad = c.cli("service", "update", "-d", "--mount-add", "type=bind,source=relative,target=/x", "flags")
        assert bad.returncode != 0
        assert "invalid bind mount source, must be an absolute path: relative" in bad.stderr
        after = c.cli_json("service", "inspect", "flags")[0]["Spec"]["TaskTemplate"]["ContainerSpec"]
        assert {m["Target"] for m in after["Mounts"]} == {"/data", "/www", "/cache"}
    finally:
        c.cli("service", "rm", "flags")
        poll_until(lambda: not containers(c.node_ids(), all_states=True), 30, what="containers removed")
        client = docker.from_env()
        try:
            client.volumes.get(volume).remove(force=True)
        except docker.errors.NotFound:
            pass
        finally:
            client.close()

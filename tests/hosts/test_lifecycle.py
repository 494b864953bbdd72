"""`dev up --hosts` / `dev down` leave the machine as it was; state survives; two clusters coexist."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.support.cluster import poll_until
from tests.support.hosts import HostsCluster, machine_snapshot

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_down_leaves_nothing_and_up_brings_the_same_cluster_back(tmp_path: Path) -> None:
    before = machine_snapshot()
    first = HostsCluster(tmp_path / "a", managers=1, workers=1)
    second = HostsCluster(tmp_path / "b", managers=1, workers=1)
    try:
        first.up()
        second.up()  # another directory and subnet, beside the first
        assert first.subnet != second.subnet
        # Kernel networking in the hosts (bridges, routes, forwarding rules, an nftables table)
        first.cli_ok("network", "create", "appnet")
        first.cli_ok("service", "create", "--name", "web", "--replicas", "2", "-p", "8080:80",
                     "--network", "appnet", "minisw/web:1")  # fmt: skip
        second.cli_ok("service", "create", "--detach", "--name", "other", "minisw/web:2")
        with urllib.request.urlopen(f"http://{first.address('worker1')}:8080/", timeout=3) as response:
            assert response.read().startswith(b"minisw/web:1 ")
        assert " web " not in second.cli_ok("service", "ls")
        first.down()
        # The second cluster does not notice the first one's teardown.
        assert " other " in second.cli_ok("service", "ls")
        second.down()
        after = machine_snapshot()
        assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        # Up again: the same cluster, with its state.
        first.dev("up")
        assert " web " in first.cli_ok("service", "ls")
        poll_until(lambda: len(first.running("web")) == 2, 60, what="web's 2 tasks running again")
    except BaseException:
        print(first.logs(), second.logs())
        raise
    finally:
        first.dev("down", check=False)
        second.dev("down", check=False)
    assert machine_snapshot() == before


def test_bad_subnet_and_changed_shape_are_refused(tmp_path: Path) -> None:
    cluster = HostsCluster(tmp_path / "c", managers=1, workers=0)
    route = subprocess.run(["ip", "-j", "route"], capture_output=True, text=True).stdout
    taken = next(r["dst"] for r in json.loads(route) if r["dst"] != "default")
    result = cluster.dev("up", "--hosts", "--subnet", taken, check=False)
    assert result.returncode != 0 and "overlaps this machine's route" in result.stderr, result.stderr
    result = cluster.dev("up", "--hosts", "--subnet", "8.8.8.0/24", check=False)
    assert result.returncode != 0 and "must be private" in result.stderr
    assert not (cluster.directory / "hosts").exists()
    before = machine_snapshot()
    try:
        cluster.up()
        result = cluster.dev("up", "--managers", "3", check=False)
        assert result.returncode != 0 and "cannot apply --managers 3" in result.stderr, result.stderr
        assert len([r for r in cluster.status() if r["role"] == "manager"]) == 1
    finally:
        cluster.dev("down", check=False)
    assert machine_snapshot() == before

"""Fixtures for separate hosts: one cluster of 3 managers and 2 workers per test module, its
faults as methods (`hosts.kill(node)`, `hosts.cut(node)`, ...), torn down with `dev down`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.hosts import HostsCluster, hosts_cluster


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostsCluster]:
    with hosts_cluster(tmp_path_factory.mktemp("hosts")) as cluster:
        yield cluster


@pytest.fixture
def settled(hosts: HostsCluster) -> Iterator[HostsCluster]:
    """The module's cluster with every host up and connected, before and after the test."""
    hosts.heal()
    hosts.dev("up")
    yield hosts
    hosts.heal()
    hosts.dev("up")

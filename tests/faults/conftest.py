"""One cluster of separate hosts (3 managers, 2 workers) for the fault suite, with the ledger of
the writes the CLI acknowledged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.hosts import HostsCluster, hosts_cluster
from tests.support.invariants import Ledger


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostsCluster]:
    with hosts_cluster(tmp_path_factory.mktemp("faults")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()

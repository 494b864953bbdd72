"""Shared fixtures: a real cluster of processes, with its logs printed when a test fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "rep_" + report.when, report)


@pytest.fixture
def cluster_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[type]:
    made: list[Cluster] = []

    def make(**kwargs: object) -> Cluster:
        c = Cluster(tmp_path / f"c{len(made)}", **kwargs)  # type: ignore[arg-type]
        c.root.mkdir(parents=True, exist_ok=True)
        made.append(c)
        return c

    yield make  # type: ignore[misc]
    failed = getattr(request.node, "rep_call", None)
    for c in made:
        if failed is not None and failed.failed:
            print(c.logs())
        c.teardown()

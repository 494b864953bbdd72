"""Formatting and filtering for `node inspect --pretty`, `node ps`/`service ps` filters and
`service ls --filter mode=`, checked against docker/cli's golden outputs."""

from __future__ import annotations

import click
import pytest

from minisw.cli.inspect_pretty import go_time, pretty_node
from minisw.cli.output import service_mode
from minisw.cli.tasklist import TaskFilters, task_full_name
from minisw.proto import objects_pb2 as pb


def _node(role: int) -> pb.Node:
    n = pb.Node(id="nodeID", role=role)  # type: ignore[arg-type]
    n.spec.annotations.name = "defaultNodeName"
    n.spec.annotations.labels["lbl1"] = "value1"
    n.description.hostname = "defaultNodeHostname"
    n.description.platform.os = "linux"
    n.description.platform.architecture = "x86_64"
    n.description.resources.memory_bytes = 20 * 1024 * 1024
    n.description.engine.engine_version = "1.13.0"
    n.description.engine.labels["engine"] = "label"
    n.meta.created_at.seconds = 1257894000  # 2009-11-10 23:00:00 UTC, Go's playground time
    n.status.state = pb.NodeStatus.READY
    n.status.addr = "127.0.0.1"
    if role == pb.MANAGER:
        n.manager_status.addr = "127.0.0.1"
        n.manager_status.reachability = pb.ManagerStatus.REACHABLE
    return n


# docker/cli cli/command/node/testdata/node-inspect-pretty.simple.golden (without the Plugins
# block: minisw's nodes describe no engine plugins), tabs as a terminal shows them.
_SIMPLE = (
    "ID:\t\t\tnodeID\n"
    "Name:\t\t\tdefaultNodeName\n"
    "Labels:\n"
    " - lbl1=value1\n"
    "Hostname:              \tdefaultNodeHostname\n"
    "Joined at:             \t2009-11-10 23:00:00 +0000 utc\n"
    "Status:\n"
    " State:\t\t\tReady\n"
    " Availability:         \tActive\n"
    " Address:\t\t127.0.0.1\n"
    "{manager}"
    "Platform:\n"
    " Operating System:\tlinux\n"
    " Architecture:\t\tx86_64\n"
    "Resources:\n"
    " CPUs:\t\t\t0\n"
    " Memory:\t\t20MiB\n"
    "Engine Version:\t\t1.13.0\n"
    "Engine Labels:\n"
    " - engine=label\n"
)
_MANAGER = "Manager Status:\n Address:\t\t127.0.0.1\n Raft Status:\t\tReachable\n Leader:\t\t{leader}\n"


def test_node_inspect_pretty_worker_matches_docker() -> None:
    assert pretty_node(_node(pb.WORKER)) == _SIMPLE.format(manager="").expandtabs(8)


def test_node_inspect_pretty_manager_and_leader_match_docker() -> None:
    n = _node(pb.MANAGER)
    assert pretty_node(n) == _SIMPLE.format(manager=_MANAGER.format(leader="No")).expandtabs(8)
    n.manager_status.leader = True
    assert pretty_node(n) == _SIMPLE.format(manager=_MANAGER.format(leader="Yes")).expandtabs(8)


def test_node_inspect_pretty_every_value_starts_on_column_24() -> None:
    n = _node(pb.MANAGER)
    n.status.message = "Heartbeat FAILURE"
    n.description.resources.nano_cpus = 2_500_000_000
    n.spec.availability = pb.NodeSpec.DRAIN
    lines = pretty_node(n).splitlines()
    assert " Message:               Heartbeat failure" in lines  # PrettyPrint lower-cases the rest
    assert " CPUs:                  2" in lines  # whole CPUs, as docker's integer division
    assert " Availability:          Drain" in lines
    for line in lines:
        if line.rstrip().endswith(":") or line.startswith(" - "):
            continue
        assert line[23] == " " and line[24] != " ", line


def test_go_time_trims_trailing_zeros_of_the_fraction() -> None:
    ts = pb.Node().meta.created_at
    ts.seconds, ts.nanos = 1257894000, 500_000_000
    assert go_time(ts) == "2009-11-10 23:00:00.5 +0000 utc"
    ts.nanos = 123_456_789
    assert go_time(ts) == "2009-11-10 23:00:00.123456789 +0000 utc"


def _task(tid: str, slot: int, service: str = "web", node: str = "n1") -> pb.Task:
    t = pb.Task(id=tid, slot=slot, node_id=node, service_id="s1")
    t.service_annotations.name = service
    return t


def test_name_filter_is_a_prefix_of_swarmkits_task_name() -> None:
    tasks = [_task("a", 1), _task("b", 2), _task("c", 10), _task("d", 0, node="nodeX")]
    assert [task_full_name(t) for t in tasks] == ["web.1.a", "web.2.b", "web.10.c", "web.nodeX.d"]
    # No client call: only node=self asks the manager.
    wanted = TaskFilters(None, ["name=web.1"])  # type: ignore[arg-type]
    assert [t.id for t in wanted.keep(tasks)] == ["a", "c"]  # web.1 is a prefix of web.10, as in Swarm
    wanted = TaskFilters(None, ["name=web.2", "name=web.nodeX"])  # type: ignore[arg-type]
    assert [t.id for t in wanted.keep(tasks)] == ["b", "d"]
    assert TaskFilters(None, []).keep(tasks) == tasks  # type: ignore[arg-type]


def test_task_filters_fill_the_request_and_refuse_unknown_keys() -> None:
    wanted = TaskFilters(None, ["desired-state=running", "node=worker1", "id=ab"])  # type: ignore[arg-type]
    request = wanted.request_for(service_ids=["s1"], node_ids=["n2"])
    assert list(request.desired_states) == [pb.RUNNING]
    assert list(request.node_ids) == ["worker1", "n2"]
    assert list(request.id_prefixes) == ["ab"] and list(request.service_ids) == ["s1"]
    assert list(wanted.request.service_ids) == []  # each request is a copy
    with pytest.raises(click.BadParameter, match="invalid filter 'colour'"):
        TaskFilters(None, ["colour=red"])  # type: ignore[arg-type]
    with pytest.raises(click.BadParameter, match="invalid desired-state 'sleeping'"):
        TaskFilters(None, ["desired-state=sleeping"])  # type: ignore[arg-type]


def test_service_mode_names_what_the_mode_filter_matches() -> None:
    replicated = pb.ServiceSpec()
    replicated.replicated.replicas = 2
    global_spec = pb.ServiceSpec()
    getattr(global_spec, "global").SetInParent()
    assert service_mode(replicated) == "replicated"
    assert service_mode(global_spec) == "global"

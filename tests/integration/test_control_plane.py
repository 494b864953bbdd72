"""Three real manager processes over real Raft: writes survive leader loss, restarts and quorum loss."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from minisw.proto import control_pb2 as api
from minisw.proto import objects_pb2 as pb
from tests.support.cluster import Cluster, ManagerProc, poll_until

pytestmark = pytest.mark.slow


def service_names(c: Cluster, host: str) -> set[str]:
    return {row["Name"] for row in c.cli_json("service", "ls", "--format", "json", host=host)}


def test_create_on_follower_is_seen_by_every_manager(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(3)
    follower = c.followers()[0]
    out = c.cli_ok(
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "3",
        "-p",
        "8080:80",
        "minisw/web:1",
        host=follower.addr,
    )
    service_id = out.strip()
    assert len(service_id) == 25 and service_id.isalnum() and service_id == service_id.lower()
    for m in c.managers:
        rows = c.cli_json("service", "ls", "--format", "json", host=m.addr)
        assert rows == [
            {
                "ID": service_id[:12],
                "Name": "web",
                "Mode": "replicated",
                "Replicas": "0/3",
                "Image": "minisw/web:1",
                "Ports": "*:8080->80/tcp",
            }
        ]


def test_kill_leader_then_keep_working_and_catch_up(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(3)
    c.cli_ok("service", "create", "-d", "--name", "before", "minisw/web:1")
    old_leader = c.leader()
    old_leader.kill()  # SIGKILL
    survivor = next(m for m in c.managers if m.running())
    # The survivors elect a new leader and accept writes.
    poll_until(
        lambda: c.cli("service", "create", "-d", "--name", "after", "minisw/web:1", host=survivor.addr).returncode == 0,
        15,
        what="a write after failover",
    )
    assert c.leader() is not old_leader
    assert service_names(c, survivor.addr) == {"before", "after"}
    # The old leader comes back as a follower and catches up.
    old_leader.start()
    poll_until(lambda: service_names(c, old_leader.addr) == {"before", "after"}, 30, what="catch-up")
    poll_until(lambda: old_leader.info().reachable_managers == 3, 30, what="old leader rejoined")


def test_stop_all_and_restart_all_keeps_state(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(3)
    c.cli_ok("service", "create", "-d", "--name", "keep", "--replicas", "2", "--env", "A=1", "minisw/web:1")
    c.cli_ok("service", "scale", "-d", "keep=4")
    before = json.loads(c.cli_ok("service", "inspect", "keep"))[0]
    for m in c.managers:
        m.stop()
    for m in c.managers:
        m.start()
    c.wait_for_quorum(3)
    after = json.loads(c.cli_ok("service", "inspect", "keep"))[0]
    assert after["ID"] == before["ID"]
    assert after["Spec"] == before["Spec"]
    assert after["Spec"]["Mode"]["Replicated"]["Replicas"] == 4
    assert after["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["A=1"]
    assert after["Version"]["Index"] >= before["Version"]["Index"]


def test_lost_quorum_fails_fast_with_a_clear_error(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(3)
    c.cli_ok("service", "create", "-d", "--name", "web", "minisw/web:1")
    survivor = c.managers[0]
    for m in c.managers[1:]:
        m.kill()
    # Give the survivor the time to notice its peers are gone (its connection timeout).
    poll_until(lambda: _sees_itself_alone(survivor), 10, what="the survivor to notice")
    started = time.monotonic()
    result = c.cli("service", "ls", host=survivor.addr, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "1 of 3 managers" in result.stderr and "2 are needed" in result.stderr, result.stderr
    assert elapsed < 5, f"took {elapsed:.1f}s"
    write = c.cli("service", "create", "-d", "--name", "other", "minisw/web:1", host=survivor.addr, timeout=30)
    assert write.returncode != 0 and "quorum" in write.stderr


def _sees_itself_alone(m: ManagerProc) -> bool:
    try:
        return m.info(timeout=2).reachable_managers == 1
    except grpc.RpcError:
        return True  # it already refuses: no leader


def test_out_of_sequence_update_is_refused(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(3)
    c.cli_ok("service", "create", "-d", "--name", "web", "--replicas", "1", "minisw/web:1")
    stub = c.followers()[0].stub()
    service = stub.GetService(api.GetServiceRequest(service_id="web"), timeout=5).service
    spec = pb.ServiceSpec()
    spec.CopyFrom(service.spec)
    spec.replicated.replicas = 2
    stub.UpdateService(
        api.UpdateServiceRequest(service_id=service.id, service_version=service.meta.version, spec=spec), timeout=5
    )
    spec.replicated.replicas = 3
    with pytest.raises(grpc.RpcError) as err:
        stub.UpdateService(
            api.UpdateServiceRequest(service_id=service.id, service_version=service.meta.version, spec=spec), timeout=5
        )
    assert err.value.details() == "update out of sequence"
    assert stub.GetService(api.GetServiceRequest(service_id="web"), timeout=5).service.spec.replicated.replicas == 2


def test_bad_input_is_refused_and_changes_nothing(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    bad = [
        (["--name", "bad name"], "name must be valid as a DNS name component"),
        (["--name", "x" * 64], "63 characters"),
        (["--name", "p", "-p", "70000:80"], "not within 1-65535"),
        (["--name", "d", "--restart-delay", "5 parsecs"], "invalid duration"),
        (["--name", "m", "--limit-memory", "lots"], "invalid size"),
        (["--name", "u", "--limit-cpu", "half"], "invalid CPU value"),
        (["--name", "k", "--constraint", "node.colour==red"], "unknown key"),
        (["--name", "r", "--replicas", "-1"], "-1"),
    ]
    for flags, message in bad:
        result = c.cli("service", "create", "-d", *flags, "minisw/web:1")
        assert result.returncode != 0, flags
        assert message in result.stderr, (flags, result.stderr)
    c.cli_ok("service", "create", "-d", "--name", "Web", "minisw/web:1")
    clash = c.cli("service", "create", "-d", "--name", "web", "minisw/web:1")
    assert clash.returncode != 0 and "already exists" in clash.stderr
    assert [r["Name"] for r in c.cli_json("service", "ls", "--format", "json")] == ["Web"]
    missing = c.cli("service", "rm", "nosuch")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "Error response from daemon: service nosuch not found"
    inspect = c.cli("service", "inspect", "nosuch")
    assert inspect.returncode == 1 and inspect.stdout.strip() == "[]"
    assert "no such service: nosuch" in inspect.stderr


def test_demoting_managers_changes_raft_membership(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(3)
    leader = c.leader()
    first, second = c.followers()
    assert c.cli_ok("node", "demote", first.name).strip() == f"Manager {first.name} demoted in the swarm."
    poll_until(lambda: not first.running(), 15, what="the demoted manager to stop")
    poll_until(lambda: leader.info().managers == 2, 15, what="Raft membership to shrink")
    rows = {r["Hostname"]: r for r in c.cli_json("node", "ls", "--format", "json", host=leader.addr)}
    assert rows[first.name]["ManagerStatus"] == "" and rows[leader.name]["ManagerStatus"] == "Leader"
    c.cli_ok("service", "create", "-d", "--name", "after", "minisw/web:1", host=second.addr)
    c.cli_ok("node", "demote", second.name, host=leader.addr)
    poll_until(lambda: leader.info().managers == 1, 15, what="one manager left")
    last = c.cli("node", "demote", leader.name, host=leader.addr)
    assert last.returncode == 1 and "attempting to demote the last manager of the swarm" in last.stderr
    assert [r["Name"] for r in c.cli_json("service", "ls", "--format", "json", host=leader.addr)] == ["after"]


@pytest.mark.docker
def test_promoting_a_worker_starts_a_manager_on_it(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    worker = c.add_agent("w1", extra=["--control-listen", f"{c.subnet}.101:4242"])
    refused = c.cli("service", "ls", host=f"{worker.host}:4242")
    assert "This node is not a swarm manager" in refused.stderr
    assert c.cli_ok("node", "promote", "w1").strip() == "Node w1 promoted to a manager in the swarm."
    poll_until(lambda: c.managers[0].info().managers == 2, 30, what="the promoted node to join Raft")
    rows = {r["Hostname"]: r for r in c.cli_json("node", "ls", "--format", "json")}
    assert rows["w1"]["ManagerStatus"] == "Reachable"
    # The node now answers the control API as a manager (its agent handed the port over).
    poll_until(lambda: c.cli("service", "ls", host=f"{worker.host}:4242").returncode == 0, 15)
    c.cli_ok("service", "create", "-d", "--name", "on-new-manager", "minisw/web:1", host=f"{worker.host}:4242")
    assert [r["Name"] for r in c.cli_json("service", "ls", "--format", "json")] == ["on-new-manager"]

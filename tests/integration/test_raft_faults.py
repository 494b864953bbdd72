"""Raft faults on real managers: a leader frozen (SIGSTOP, as a GC or VM pause) past the heartbeat
timeout and replaced must write nothing once it resumes: its components' writes are refused
(term fencing in manager/state/raft.py), so no live node is marked down and no slot runs twice."""

from __future__ import annotations

import collections
import os
import signal
import time
from typing import Any

import pytest

from minisw.proto import control_pb2 as api
from minisw.proto import control_pb2_grpc as api_grpc
from tests.support.cluster import Cluster, ManagerProc, operator_channel, poll_until, sampling

pytestmark = pytest.mark.slow

NODE_DOWN, NODE_READY, RUNNING = 3, 2, 512


def _nodes_and_tasks(c: Cluster, live: ManagerProc) -> tuple[dict[str, int], list[Any]]:
    with operator_channel(live.addr, c.tls_dir) as channel:
        stub = api_grpc.ControlStub(channel)
        nodes = stub.ListNodes(api.ListNodesRequest(), timeout=3).nodes
        tasks = stub.ListTasks(api.ListTasksRequest(service_ids=["web"]), timeout=3).tasks
    return {n.description.hostname: n.status.state for n in nodes}, list(tasks)


@pytest.mark.docker
def test_a_leader_frozen_past_the_heartbeat_timeout_writes_nothing_when_it_resumes(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(3)
    c.add_agent("w1")
    c.wait_node_ready("w1")
    c.cli_ok("service", "create", "-d", "--name", "web", "--replicas", "2", "minisw/web:1")
    poll_until(lambda: len(c.running_tasks("web")) == 2, 60, what="web's 2 tasks running")
    leader = c.leader()
    live = c.followers()[0]

    os.kill(leader.pid, signal.SIGSTOP)
    try:
        poll_until(lambda: live.info().leader_addr not in ("", leader.addr), 15, what="a new leader")
        # On the frozen leader's clock, w1's heartbeats stop now: past 3 s its dispatcher, once it
        # runs again, finds w1 overdue and wants to mark it down.
        time.sleep(5)
    finally:
        os.kill(leader.pid, signal.SIGCONT)

    states: list[int] = []
    live_per_slot: list[int] = []

    def sample() -> None:
        nodes, tasks = _nodes_and_tasks(c, live)
        states.append(nodes.get("w1", -1))
        running = collections.Counter(t.slot for t in tasks if t.status.state == RUNNING and t.desired_state == RUNNING)
        live_per_slot.append(max(running.values(), default=0))

    with sampling(sample, 0.2):
        time.sleep(8)
    assert states, "no sample succeeded"
    assert NODE_DOWN not in states, f"w1 was marked down after the old leader resumed: {states}"
    assert max(live_per_slot) <= 1, f"a slot ran two live tasks: {live_per_slot}"
    poll_until(lambda: len(c.running_tasks("web")) == 2, 30, what="web's 2 tasks running")
    log = leader.log_path.read_text(errors="replace")
    # Its leader components of the old term stopped (or failed on their first refused write).
    assert "lost leadership of term" in log or "leader term ended with an error" in log, leader.log_tail(60)

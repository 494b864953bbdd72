"""Job modes with real agents and Docker: tasks run to completion (exit 0) and are never restarted,
a replicated job runs at most --max-concurrent tasks at a time until --replicas completed, a
failed task is retried under the restart policy, a global job runs once on each node, and an
update runs the job again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from minisw.proto import objects_pb2 as pb
from tests.support.cluster import Cluster, poll_until, sampling

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def unfinished(task: pb.Task) -> bool:
    return task.desired_state <= pb.COMPLETE and pb.ASSIGNED <= task.status.state < pb.COMPLETE


def ls_row(c: Cluster, name: str) -> dict[str, str]:
    rows = [r for r in c.cli_json("service", "ls", "--format", "json") if r["Name"] == name]
    assert len(rows) == 1, rows
    return rows[0]  # type: ignore[no-any-return]


def test_replicated_job_runs_max_concurrent_at_a_time_to_total_completions(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    c.add_agent("w1")
    c.add_agent("w2")
    most_running = [0]
    most_unfinished = [0]

    def sample() -> None:
        tasks = c.tasks("batch")
        most_running[0] = max(most_running[0], sum(1 for t in tasks if t.status.state == pb.RUNNING))
        most_unfinished[0] = max(most_unfinished[0], sum(1 for t in tasks if unfinished(t)))

    with sampling(sample, 0.05):
        out = c.cli_ok(
            "service",
            "create",
            "--name",
            "batch",
            "--mode",
            "replicated-job",
            "--replicas",
            "4",
            "--max-concurrent",
            "2",
            "--",
            "minisw/web:1",
            "sh",
            "-c",
            "sleep 1",
        )
    # The command waited for the job, with docker's job progress, and no verify wait.
    lines = out.splitlines()
    assert "job progress: 4 out of 4 complete" in lines
    assert "active tasks: 0 out of 0 tasks" in lines
    assert lines[-1] == "job complete"
    assert 1 <= most_running[0] <= 2 and most_unfinished[0] == 2, (most_running, most_unfinished)

    tasks = c.tasks("batch")
    assert sorted(t.slot for t in tasks) == [0, 1, 2, 3]  # one task per completion: none ran twice
    assert all(t.status.state == pb.COMPLETE and t.desired_state == pb.COMPLETE for t in tasks)
    assert all(t.status.container.exit_code == 0 for t in tasks)
    row = ls_row(c, "batch")
    assert (row["Mode"], row["Replicas"]) == ("replicated job", "0/2 (4/4 completed)")
    table = c.cli_ok("service", "ls").splitlines()
    assert any("replicated job" in line and "0/2 (4/4 completed)" in line for line in table[1:]), table
    ps = c.cli_json("service", "ps", "batch", "--format", "json")
    assert {r["DesiredState"] for r in ps} == {"Complete"}
    assert all(r["CurrentState"].startswith("Complete ") for r in ps)
    inspect = c.cli_json("service", "inspect", "batch")[0]
    assert inspect["Spec"]["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 4}}
    assert inspect["JobStatus"]["JobIteration"] == {"Index": 0}

    time.sleep(3)  # completed tasks stay completed: nothing restarts them
    assert sorted(t.id for t in c.tasks("batch")) == sorted(t.id for t in tasks)

    # An update (here --force) runs the job again, as a new iteration.
    c.cli_ok("service", "update", "--force", "batch")
    inspect = c.cli_json("service", "inspect", "batch")[0]
    assert inspect["JobStatus"]["JobIteration"] == {"Index": 1}
    fresh = [t for t in c.tasks("batch") if t.job_iteration.index == 1]
    assert sorted(t.slot for t in fresh) == [0, 1, 2, 3]
    assert all(t.status.state == pb.COMPLETE for t in fresh)
    assert ls_row(c, "batch")["Replicas"] == "0/2 (4/4 completed)"  # counts the current iteration only

    # docker: scaling a replicated job sets its completions (and, being an update, runs it again).
    out = c.cli_ok("service", "scale", "batch=6")
    assert out.splitlines()[0] == "batch scaled to 6" and out.splitlines()[-1] == "job complete"
    assert ls_row(c, "batch")["Replicas"] == "0/2 (6/6 completed)"


def test_a_failed_job_task_is_retried_under_on_failure(cluster_factory: type, tmp_path: Path) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    c.add_agent("w1")
    marks = tmp_path / "marks"
    marks.mkdir()
    # The first run leaves a mark and fails; the retry finds the mark and succeeds.
    script = "if [ -e /marks/ran ]; then exit 0; fi; touch /marks/ran; exit 3"
    c.cli_ok(
        "service",
        "create",
        "--name",
        "once",
        "--mode",
        "replicated-job",
        "--restart-condition",
        "on-failure",
        "--restart-delay",
        "0s",
        "--mount",
        f"type=bind,source={marks},target=/marks",
        "--",
        "minisw/web:1",
        "sh",
        "-c",
        script,
    )
    tasks = sorted(c.tasks("once"), key=lambda t: t.meta.created_at.ToNanoseconds())
    assert len(tasks) == 2, [(t.slot, t.status.state, t.desired_state) for t in tasks]
    failed, retried = tasks
    assert (failed.status.state, failed.desired_state) == (pb.FAILED, pb.SHUTDOWN)
    assert failed.status.err == "task: non-zero exit (3)"
    assert (retried.status.state, retried.desired_state) == (pb.COMPLETE, pb.COMPLETE)
    assert failed.slot == retried.slot == 0
    assert ls_row(c, "once")["Replicas"] == "0/1 (1/1 completed)"


def test_global_job_runs_once_on_each_node_and_on_nodes_that_join(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    c.add_agent("w1")
    c.add_agent("w2")
    out = c.cli_ok("service", "create", "--name", "setup", "--mode", "global-job", "--", "minisw/web:1", "true")
    assert out.splitlines()[-1] == "job complete"
    names = {n.id: n.description.hostname for n in c.nodes()}

    def completed_on() -> list[str]:
        return sorted(names.get(t.node_id, t.node_id) for t in c.tasks("setup") if t.status.state == pb.COMPLETE)

    assert completed_on() == ["w1", "w2"]
    assert len(c.tasks("setup")) == 2
    assert ls_row(c, "setup") == {**ls_row(c, "setup"), "Mode": "global job", "Replicas": "0/0 (2/2 completed)"}
    refused = c.cli("service", "scale", "setup=3")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "setup: scale can only be used with replicated or replicated-job mode"

    c.add_agent("w3")
    names = {n.id: n.description.hostname for n in c.nodes()}
    poll_until(lambda: completed_on() == ["w1", "w2", "w3"], 30, what="the job run on the node that joined")
    time.sleep(2)
    assert len(c.tasks("setup")) == 3  # once per node, never again
    assert ls_row(c, "setup")["Replicas"] == "0/0 (3/3 completed)"

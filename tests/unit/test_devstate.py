"""Liveness of `minisw dev`'s processes: decided from the child's handle or its start time, never
from /proc/PID/cmdline (which reads empty for a moment after a spawn)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from minisw.cli.devstate import ClusterState, Process, alive, load, process_start_time, save, spawn


def test_a_process_just_spawned_is_alive_every_time(tmp_path: Path) -> None:
    procs = []
    for i in range(100):
        proc = Process(f"p{i}", "worker", "agent", "", str(tmp_path / f"p{i}"), [])
        spawn(proc, [sys.executable, "-c", "import time; time.sleep(30)"])
        assert alive(proc.pid, proc.start_time), f"spawn {i} taken for dead"
        procs.append(proc)
    for proc in procs:
        os.kill(proc.pid, 9)
    deadline = time.monotonic() + 10
    while any(alive(p.pid, p.start_time) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p.pid, p.start_time) for p in procs)


def test_a_dead_or_reused_pid_is_not_ours(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not alive(child.pid)  # gone (and reaped)
    me = os.getpid()
    assert alive(me, process_start_time(me))
    assert not alive(me, process_start_time(me) - 1)  # same PID, another process's start time


def test_state_file_round_trip_and_old_format(tmp_path: Path) -> None:
    state = ClusterState(str(tmp_path), "hosts", "192.168.213.0/24")
    state.processes.append(Process("manager1", "manager", "manager", "192.168.213.11:4242", "d", ["manager"]))
    save(state)
    again = load(str(tmp_path))
    assert (again.mode, again.subnet, again.processes) == ("hosts", "192.168.213.0/24", state.processes)
    (tmp_path / "cluster.json").write_text(
        '[{"name": "m", "node_role": "manager", "role": "manager", '
        '"address": "a", "data_dir": "d", "args": [], "pid": 0}]'
    )
    old = load(str(tmp_path))
    assert old.mode == "loopback" and old.processes[0].name == "m"

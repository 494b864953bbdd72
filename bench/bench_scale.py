"""The manager at scale (issue #13): 3 real managers, N simulated nodes (``simnodes.py``: real
certificates, sessions, heartbeats and assignment streams; a fake runtime), T tasks. Prints one JSON
object; every figure is the median of ``--runs`` runs with its spread (``figures.py``), each run on
a fresh cluster.

A run: ``minisw dev up --managers 3`` (loopback), the managers' own nodes drained (no real
container starts), the simulated nodes joined (``--session-rate`` first sessions a second, as nodes
that join over time); then, in order (``--skip`` leaves phases out; a phase that fails ends the run,
and the JSON keeps what was measured with ``failed_phase`` and ``error``):

- ``all_running_s``: ``minisw service create -d --replicas T`` (from starting the CLI) until the
  leader's ``ListServices`` counts T RUNNING tasks (``all_running_from_commit_s``: from the service's
  creation time in the store, without the CLI's start-up);
- ``idle_leader_cpu_cores`` (and the followers' and the simulator's): CPU time over ``--idle``
  seconds while every node heartbeats and nothing changes, from /proc/<pid>/stat;
- ``leader_rss_mb``, ``leader_kb_per_node`` and ``leader_kb_per_task``: RSS deltas of the leader
  across the nodes' joining and the tasks' start;
- ``node_down_s`` / ``node_down_reschedule_s``: one simulated node holding tasks stops heartbeating
  (a paused agent); seconds until the node is DOWN, and until T tasks run again on the other nodes;
- ``update_tasks_per_s``: ``service update --image ... --update-parallelism 100 --update-delay 0s``
  of every task: T / (the update's completion time in the store - its start - the monitor period,
  which the updater waits once after the last task); and where a slot's time goes, as medians
  (``update_slot_*_s_median``: the update's start to the slot's new task, that to the old task
  reported stopped, that to the new one reported running; ``*_at_agent_*``: as the agent saw it);
- ``failover_new_leader_s`` / ``failover_nodes_back_s``: SIGKILL of the leader until another manager
  leads, and until the new leader lists every simulated node READY with a newer version than before
  the kill (every node registered again with its dispatcher).

The simulator runs pinned to the last CPU (taskset) and the leader to the first, the followers
beside the simulator, so the leader's figures are its own; before the failover every manager may
use every CPU. ``--profile DIR`` records the leader with py-spy (raw, for flamegraphs) during the
create and the idle window. ``minisw dev down`` always runs at the end.

Run: ``flock /tmp/minisw-it.lock python bench/bench_scale.py`` (1000 nodes, 10000 tasks, 3 runs);
``--nodes 20 --tasks 200 --runs 1`` to try it.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from bench.figures import figure, runs_parser
from minisw.cli.devstate import ClusterState
from minisw.cli.devstate import load as load_cluster
from minisw.proto import control_pb2 as api
from minisw.proto import control_pb2_grpc as api_grpc
from minisw.proto import objects_pb2 as pb
from tests.support.cluster import poll_until

SERVICE = "scale"
IMAGE, NEW_IMAGE = "minisw/web:1", "minisw/web:2"
TARGETS = {"all_running_s": "<= 30 at 1000/10000", "idle_leader_cpu_cores": "< 0.5"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_MESSAGE = 256 << 20  # ListTasks of every task in one reply
SIM = Path(__file__).resolve().parent / "simnodes.py"


# ---- processes ---------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pin(pid: int, cpus: str) -> None:
    """Every thread of ``pid`` (-a: grpc and Raft run threads of their own) onto ``cpus``."""
    subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, capture_output=True)


def poll(check: Callable[[], Any], timeout: float, interval: float, what: str) -> Any:
    return poll_until(check, timeout, interval, what)


class Sim:
    """The simulator process: JSON commands in, JSON lines out (see simnodes.py)."""

    def __init__(self, args: list[str], log_path: Path, cpus: str | None) -> None:
        command = [sys.executable, str(SIM), *args]
        if cpus is not None:
            command = ["taskset", "-c", cpus, *command]
        self._log = open(log_path, "ab")  # closed in stop()
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1
        )
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self._lines.put(json.loads(line))
        self._lines.put(None)

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"the simulator did not say {event!r} within {timeout:g}s") from None
            if item is None:
                raise RuntimeError(f"the simulator exited ({self.proc.wait()}) before {event!r}")
            if item.get("event") == "error":
                raise RuntimeError(f"simulator: {item.get('error')}")
            if item.get("event") == event:
                return item

    def command(self, reply: str, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(fields) + "\n")
        self.proc.stdin.flush()
        return self.expect(reply, 30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@contextlib.contextmanager
def profiling(directory: str | None, pid: int, name: str, seconds: float) -> Iterator[None]:
    """py-spy record of ``pid`` while the block runs (at most ``seconds``), if asked for."""
    if not directory:
        yield
        return
    out = Path(directory) / f"{name}.txt"
    spy = subprocess.Popen(
        ["py-spy", "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "50", "--format", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()


# ---- the cluster -------------------------------------------------------------------------------
class DevCluster:
    """``minisw dev up --managers 3`` in a directory of its own, driven through its control API."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "cluster"
        self.env = {**os.environ, "MINISW_CONFIG": str(root / "config")}  # dev up saves a CLI context there
        self.tls = self.dir / "manager1" / "operator-tls"
        self._channels: dict[str, grpc.Channel] = {}
        self.state: ClusterState | None = None

    def cli(self, *args: str, host: str | None = None, timeout: float = 300) -> str:
        prefix = ["--host", host, "--tls-dir", str(self.tls)] if host else []
        result = subprocess.run(
            [sys.executable, "-m", "minisw.cli", *prefix, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )
        if result.returncode != 0:
            raise RuntimeError(f"minisw {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def up(self) -> None:
        self.cli("dev", "up", "--managers", "3", "--dir", str(self.dir))
        self.state = load_cluster(str(self.dir))

    def down(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        if (self.dir / "cluster.json").exists():
            self.cli("dev", "down", "--dir", str(self.dir), timeout=120)

    def managers(self) -> dict[str, int]:
        """Control address -> PID of every manager process."""
        assert self.state is not None
        return {p.address: p.pid for p in self.state.processes if p.role == "manager"}

    def stub(self, addr: str) -> api_grpc.ControlStub:
        channel = self._channels.get(addr)
        if channel is None:
            ca, cert, key = ((self.tls / n).read_bytes() for n in ("ca.pem", "cert.pem", "key.pem"))
            creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
            options = [
                ("grpc.ssl_target_name_override", "swarm-manager"),
                ("grpc.default_authority", "swarm-manager"),
                ("grpc.max_receive_message_length", MAX_MESSAGE),
            ]
            channel = self._channels[addr] = grpc.secure_channel(addr, creds, options=options)
        return api_grpc.ControlStub(channel)

    def leader(self, among: list[str] | None = None, timeout: float = 30) -> str:
        candidates = among or list(self.managers())

        def find() -> str:
            for addr in candidates:
                with contextlib.suppress(grpc.RpcError):
                    leader = str(self.stub(addr).Info(api.Empty(), timeout=1).leader_addr)
                    if leader in candidates:
                        return leader
            return ""

        return str(poll(find, timeout, 0.02, "a leader"))

    def nodes(self, addr: str) -> list[pb.Node]:
        return list(self.stub(addr).ListNodes(api.ListNodesRequest(), timeout=30).nodes)

    def service_status(self, addr: str) -> api.ServiceStatus:
        reply = self.stub(addr).ListServices(api.ListServicesRequest(name_prefixes=[SERVICE]), timeout=30)
        status: api.ServiceStatus = reply.statuses[0]
        return status

    def service(self, addr: str) -> pb.Service:
        service: pb.Service = self.stub(addr).GetService(api.GetServiceRequest(service_id=SERVICE), timeout=30).service
        return service

    def tasks(self, addr: str, **filters: Any) -> list[pb.Task]:
        return list(self.stub(addr).ListTasks(api.ListTasksRequest(**filters), timeout=60).tasks)


def _ts(stamp: Any) -> float:
    return float(stamp.seconds + stamp.nanos / 1e9)


def _slot_breakdown(tasks: list[pb.Task], started_wall: float) -> dict[str, float]:
    """Where a rolling update's time goes, per slot (medians, managers' clock): from the update's
    start to the new task's creation (``wait``), from there to the old task reported stopped
    (``stop``), and from there to the new task reported running (``start``)."""
    by_slot: dict[int, list[pb.Task]] = {}
    for t in tasks:
        by_slot.setdefault(t.slot, []).append(t)
    waits, stops, starts = [], [], []
    agent_stops, agent_starts = [], []
    for slot_tasks in by_slot.values():
        slot_tasks.sort(key=lambda t: _ts(t.meta.created_at))
        if len(slot_tasks) < 2 or slot_tasks[-1].status.state != pb.RUNNING:
            continue
        old, new = slot_tasks[-2], slot_tasks[-1]
        created = _ts(new.meta.created_at)
        waits.append(created - started_wall)
        stops.append(_ts(old.status.applied_at) - created)
        starts.append(_ts(new.status.applied_at) - _ts(old.status.applied_at))
        agent_stops.append(_ts(old.status.timestamp) - created)
        agent_starts.append(_ts(new.status.timestamp) - _ts(old.status.applied_at))
    if not waits:
        return {}
    return {
        "update_slot_wait_s_median": round(statistics.median(waits), 3),
        "update_slot_stop_s_median": round(statistics.median(stops), 3),
        "update_slot_start_s_median": round(statistics.median(starts), 3),
        "update_slot_stop_at_agent_s_median": round(statistics.median(agent_stops), 3),
        "update_slot_start_at_agent_s_median": round(statistics.median(agent_starts), 3),
    }


def _sim_nodes(nodes: list[pb.Node], prefix: str) -> list[pb.Node]:
    return [n for n in nodes if n.description.hostname.startswith(prefix)]


# ---- one run -----------------------------------------------------------------------------------
class Run:
    def __init__(self, args: Any, root: Path) -> None:
        self.args = args
        self.root = root
        self.c = DevCluster(root)
        self.sim: Sim | None = None
        self.out: dict[str, Any] = {}
        self.leader, self.leader_pid = "", 0
        self.rss_nodes = 0.0
        cpus = os.cpu_count() or 1
        self.pinned = args.pin and cpus >= 2
        self.leader_cpus, self.other_cpus = "0", f"1-{cpus - 1}"

    def go(self) -> dict[str, Any]:
        """The phases in order; a phase that fails ends the run, keeping what was measured before."""
        phases = [self._setup, self._create, self._idle, self._node_down, self._update, self._failover]
        phases = [p for p in phases if p.__name__.strip("_") not in self.args.skip]
        try:
            for phase in phases:
                name = phase.__name__.strip("_")
                try:
                    phase()
                except Exception as err:
                    if phase == self._setup:
                        raise
                    self.out["failed_phase"] = name
                    self.out["error"] = f"{type(err).__name__}: {err}"
                    print(f"phase {name} failed: {err}; logs in {self.root}", file=sys.stderr)
                    return self.out
                if phase != self._failover:
                    self._check_leader(name)
            return self.out
        finally:
            if self.sim is not None:
                self.sim.stop()
            self.c.down()

    def _check_leader(self, phase: str) -> None:
        """A leader that changed during a phase makes its figures the wrong process's: say so."""
        now = self.c.leader()
        if now != self.leader:
            self.out.setdefault("leader_changed_in", []).append(phase)
            self.leader = now
            self.leader_pid = self.c.managers()[now]

    def _cpu(self, pids: list[int]) -> Callable[[], list[float]]:
        """Starts a CPU measurement of ``pids``; calling the result ends it: cores used by each."""
        before = [cpu_seconds(p) for p in pids]
        t0 = time.monotonic()

        def end() -> list[float]:
            elapsed = time.monotonic() - t0
            return [round((cpu_seconds(p) - b) / elapsed, 3) for p, b in zip(pids, before, strict=True)]

        return end

    def _setup(self) -> None:
        c, args = self.c, self.args
        c.up()
        self.leader = c.leader()
        self.leader_pid = c.managers()[self.leader]
        if self.pinned:
            pin(self.leader_pid, self.leader_cpus)
            for addr, pid in c.managers().items():
                if addr != self.leader:
                    pin(pid, self.other_cpus)
        for node in c.nodes(self.leader):  # the managers' own agents: no real container may start
            c.cli("node", "update", "--availability", "drain", node.id, host=self.leader)
        time.sleep(2)
        rss_before = rss_mb(self.leader_pid)
        token = c.stub(self.leader).GetCluster(api.Empty(), timeout=10).cluster.join_tokens.worker
        sim_args = ["--managers", ",".join(c.managers()), "--token", token, "--nodes", str(args.nodes)]
        sim_args += ["--dir", str(self.root / "sim"), "--prefix", args.prefix]
        sim_args += ["--start-delay", str(args.start_delay), "--failure-rate", str(args.failure_rate)]
        sim_args += ["--log-level", args.sim_log_level, "--session-rate", str(args.session_rate)]
        self.sim = Sim(sim_args, self.root / "sim.log", self.other_cpus if self.pinned else None)
        started = time.monotonic()
        joined = self.sim.expect("joined", 60 + args.nodes * 0.2)
        ramp = args.nodes / args.session_rate if args.session_rate > 0 else 0
        registered = self.sim.expect("registered", 60 + args.nodes * 0.1 + ramp)
        self.out["sessions_s"] = round(registered["seconds"], 2)

        def all_ready() -> bool:
            sims = _sim_nodes(c.nodes(self.leader), args.prefix)
            return len(sims) == args.nodes and all(n.status.state == pb.NodeStatus.READY for n in sims)

        poll(all_ready, 120, 0.5, f"{args.nodes} simulated nodes READY")
        self.out["join_s"] = round(joined["seconds"], 2)
        self.out["nodes_ready_s"] = round(time.monotonic() - started, 2)
        time.sleep(args.settle)
        self.rss_nodes = rss_mb(self.leader_pid)
        self.out["leader_kb_per_node"] = round((self.rss_nodes - rss_before) * 1024 / args.nodes, 1)
        status = self.sim.command("status", cmd="status")
        self.out["sim_rss_mb_nodes_only"] = status["rss_mb"]

    def _create(self) -> None:
        c, args = self.c, self.args
        assert self.sim is not None
        with profiling(args.profile, self.leader_pid, f"create-{args.nodes}x{args.tasks}", args.timeout):
            cpu = self._cpu([self.leader_pid, self.sim.proc.pid])
            started, started_wall = time.monotonic(), time.time()
            c.cli("service", "create", "-d", "--name", SERVICE, "--replicas", str(args.tasks), IMAGE, host=self.leader)
            poll(
                lambda: c.service_status(self.leader).running_tasks >= args.tasks,
                args.timeout,
                0.2,
                f"{args.tasks} tasks RUNNING",
            )
            done, done_wall = time.monotonic(), time.time()
            self.out["create_leader_cpu_cores"], self.out["create_sim_cpu_cores"] = cpu()
        created = c.service(self.leader).meta.created_at
        self.out["all_running_s"] = round(done - started, 2)
        self.out["all_running_from_commit_s"] = round(done_wall - (created.seconds + created.nanos / 1e9), 2)
        self.out["cli_to_commit_s"] = round(created.seconds + created.nanos / 1e9 - started_wall, 2)

    def _idle(self) -> None:
        c, args = self.c, self.args
        assert self.sim is not None
        time.sleep(args.settle)
        self.out["leader_rss_mb"] = round(rss_mb(self.leader_pid), 1)
        self.out["leader_kb_per_task"] = round((rss_mb(self.leader_pid) - self.rss_nodes) * 1024 / args.tasks, 2)
        pids = c.managers()
        followers = [pid for addr, pid in pids.items() if addr != self.leader]
        watched = [self.leader_pid, *followers, self.sim.proc.pid]
        with profiling(args.profile, self.leader_pid, f"idle-{args.nodes}x{args.tasks}", args.idle + 5):
            before = [cpu_seconds(p) for p in watched]
            t0 = time.monotonic()
            time.sleep(args.idle)
            after = [cpu_seconds(p) for p in watched]
            elapsed = time.monotonic() - t0
        cores = [round((a - b) / elapsed, 3) for a, b in zip(after, before, strict=True)]
        self.out["idle_leader_cpu_cores"] = cores[0]
        self.out["idle_follower_cpu_cores"] = cores[1:-1]
        self.out["idle_sim_cpu_cores"] = cores[-1]
        status = self.sim.command("status", cmd="status")
        self.out["sim_rss_mb"] = status["rss_mb"]
        self.out["sim_sessions"] = status["sessions"]
        self.out["sim_tasks"] = status["tasks"]

    def _node_down(self) -> None:
        c, args = self.c, self.args
        assert self.sim is not None
        frozen = self.sim.command("freeze", cmd="freeze")
        started = time.monotonic()
        node_id = frozen["node_id"]
        victims = [
            t.id
            for t in c.tasks(self.leader, node_ids=[node_id])
            if t.status.state == pb.RUNNING and t.desired_state == pb.RUNNING
        ]
        down_at: list[float] = []

        def replaced() -> bool:
            if not down_at:
                node = c.stub(self.leader).GetNode(api.GetNodeRequest(node_id=node_id), timeout=10).node
                if node.status.state == pb.NodeStatus.DOWN:
                    down_at.append(time.monotonic())
            still = sum(t.status.state == pb.RUNNING for t in c.tasks(self.leader, node_ids=[node_id]))
            return bool(down_at) and c.service_status(self.leader).running_tasks - still >= args.tasks

        poll(replaced, 120, 0.1, f"the tasks of frozen node {frozen['node']} to run elsewhere")
        self.out["node_down_tasks"] = len(victims)
        self.out["node_down_s"] = round(down_at[0] - started, 2)
        self.out["node_down_reschedule_s"] = round(time.monotonic() - started, 2)
        self.sim.command("thaw", cmd="thaw", node=frozen["node"])

        def back() -> bool:
            node = c.stub(self.leader).GetNode(api.GetNodeRequest(node_id=node_id), timeout=10).node
            return bool(node.status.state == pb.NodeStatus.READY)

        poll(back, 60, 0.2, f"node {frozen['node']} READY again")
        time.sleep(args.settle)

    def _update(self) -> None:
        c, args = self.c, self.args
        assert self.sim is not None
        with profiling(args.profile, self.leader_pid, f"update-{args.nodes}x{args.tasks}", args.timeout):
            cpu = self._cpu([self.leader_pid, self.sim.proc.pid])
            started_wall = time.time()
            c.cli(
                "service", "update", "-d", "--image", NEW_IMAGE, "--update-parallelism", "100",
                "--update-delay", "0s", SERVICE, host=self.leader,
            )  # fmt: skip

            def finished() -> pb.Service | None:
                service = c.service(self.leader)
                state = service.update_status.state
                if state in (pb.UpdateStatus.PAUSED, pb.UpdateStatus.ROLLBACK_STARTED):
                    raise RuntimeError(f"the update stopped: {service.update_status.message}")
                return service if state == pb.UpdateStatus.COMPLETED else None

            try:
                service = poll(finished, args.timeout, 0.5, "the rolling update to complete")
            finally:
                self.out["update_leader_cpu_cores"], self.out["update_sim_cpu_cores"] = cpu()
        done = service.update_status.completed_at
        monitor = service.spec.update.monitor
        monitor_s = monitor.seconds + monitor.nanos / 1e9 if service.spec.update.HasField("monitor") else 5.0
        seconds = done.seconds + done.nanos / 1e9 - started_wall - monitor_s
        fresh = [
            t
            for t in c.tasks(self.leader, service_ids=[SERVICE], up_to_date=True)
            if t.status.state == pb.RUNNING and t.desired_state == pb.RUNNING
        ]
        if len(fresh) < args.tasks:
            raise RuntimeError(f"after the update only {len(fresh)} of {args.tasks} tasks run the new spec")
        self.out["update_s"] = round(seconds, 2)
        self.out["update_tasks_per_s"] = round(args.tasks / seconds, 1)
        self.out.update(_slot_breakdown(c.tasks(self.leader, service_ids=[SERVICE]), started_wall))

    def _failover(self) -> None:
        c, args = self.c, self.args
        if self.pinned:  # any survivor may become the leader: let each use every CPU
            for pid in c.managers().values():
                pin(pid, f"0-{(os.cpu_count() or 1) - 1}")
        versions = {n.id: n.meta.version.index for n in _sim_nodes(c.nodes(self.leader), args.prefix)}
        survivors = [a for a in c.managers() if a != self.leader]
        os.kill(self.leader_pid, signal.SIGKILL)
        started = time.monotonic()
        new_leader = c.leader(survivors, timeout=60)
        self.out["failover_new_leader_s"] = round(time.monotonic() - started, 2)

        def all_back() -> bool:
            sims = _sim_nodes(c.nodes(new_leader), args.prefix)
            back = [n for n in sims if n.status.state == pb.NodeStatus.READY and n.meta.version.index > versions[n.id]]
            return len(back) == len(versions)

        poll(all_back, 180, 0.2, "every simulated node back with the new leader")
        self.out["failover_nodes_back_s"] = round(time.monotonic() - started, 2)


def main() -> None:
    parser = runs_parser(__doc__ or "")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of the idle CPU window")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to let the cluster settle between phases")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for the create and the update")
    parser.add_argument("--start-delay", type=float, default=0.0, help="simulated container start time")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="fraction of simulated starts that fail")
    parser.add_argument("--prefix", default="sim")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin the leader and the simulator")
    parser.add_argument(
        "--skip", default="", help="comma-separated phases to leave out: create, idle, node_down, update, failover"
    )
    parser.add_argument("--profile", default=None, help="directory for py-spy recordings of the leader")
    parser.add_argument(
        "--session-rate", type=float, default=100, help="simulated nodes opening their first session per second"
    )
    parser.add_argument("--sim-log-level", default="WARNING", help="the simulator's log level (its log: sim.log)")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory (logs) afterwards")
    args = parser.parse_args()
    args.skip = {p.strip() for p in args.skip.split(",") if p.strip()}
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for i in range(args.runs):
        root = Path(tempfile.mkdtemp(prefix=f"bench-scale-{i}-"))
        try:
            runs.append(Run(args, root).go())
        except BaseException:
            print(f"run {i} failed; its logs are in {root}", file=sys.stderr)
            raise
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        print(json.dumps({"run": i, **runs[-1]}), file=sys.stderr)
    numeric = list(dict.fromkeys(k for r in runs for k, v in r.items() if isinstance(v, int | float)))
    out: dict[str, Any] = {
        "nodes": args.nodes,
        "tasks": args.tasks,
        "runs": args.runs,
        "pinned": args.pin and (os.cpu_count() or 1) >= 2,
        **{key: figure((r[key] for r in runs if key in r), 3) for key in numeric},
        "per_run": runs,
        "targets": TARGETS,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

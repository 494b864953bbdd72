"""The small case near the floor (issue #13); prints one JSON object.

On a loopback local cluster (``minisw dev up``: 1 manager and its agent, ``--workers`` more agents,
all on this machine's daemon), pairs of, alternating which goes first:

- the floor: 20 ``docker run -d minisw/web:1`` started at once (one thread each) until every one
  has returned (``docker run -d`` returns once its container started), then removed;
- minisw: ``minisw service create -d --replicas 20 minisw/web:1`` (the CLI as a process) until the
  store says 20 run (``ListTasks`` every 20 ms), then ``service rm`` until its containers are gone.

``floor_s``, ``minisw_s`` and ``ratio`` (minisw over floor, per pair) are medians of ``--runs``
pairs, after one warm-up pair that is not counted. ``trace`` breaks each minisw create down by
stage, in seconds since the CLI was started, from the store (the service's and tasks' created_at,
each state's TaskStatus.timestamp as first seen by the poll, RUNNING's applied_at) and Docker's
own events (container create and start): the first and the last task per stage, medians over the
runs. ``floor_trace`` gives Docker's events for the floor the same way.

Run under the integration lock (the cluster takes the fixed loopback addresses of ``minisw dev``):
``flock /tmp/minisw-it.lock python bench/bench_small.py`` (about two minutes).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import figure, runs_parser
from minisw.cli.client import Client
from minisw.proto import control_pb2 as api
from minisw.proto import objects_pb2 as pb

IMAGE = "minisw/web:1"
POLL = 0.02
FLOOR_LABEL = "minisw.bench.floor"
# Stages of one create, in the order a task goes through them.
STAGES = (
    "service_created",
    "task_created",
    "ASSIGNED",
    "ACCEPTED",
    "PREPARING",
    "docker_create",
    "READY",
    "STARTING",
    "docker_start",
    "RUNNING",
    "running_applied",
    "seen_running",
)


def _minisw_command() -> list[str]:
    """The console script beside this interpreter (a pyenv shim would add its own start-up)."""
    script = Path(sys.executable).parent / "minisw"
    return [str(script)] if script.exists() else [sys.executable, "-m", "minisw.cli"]


def _ts(stamp: Any) -> float | None:
    return stamp.seconds + stamp.nanos / 1e9 if stamp.seconds else None


def _docker_events(since: float, until: float, label: str) -> list[tuple[str, float, str]]:
    """(action, time, container name) of the containers carrying ``label``, from Docker's events."""
    out = subprocess.run(
        [
            "docker",
            "events",
            "--since",
            f"{since:.6f}",
            "--until",
            f"{until:.6f}",
            "--filter",
            "type=container",
            "--filter",
            f"label={label}",
            "--format",
            "{{json .}}",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    events = []
    for line in out.splitlines():
        e = json.loads(line)
        name = ((e.get("Actor") or {}).get("Attributes") or {}).get("name", "")
        events.append((str(e.get("Action") or e.get("status")), e["timeNano"] / 1e9, name))
    return events


def _event_stages(events: list[tuple[str, float, str]], t0: float) -> dict[str, list[float]]:
    stages: dict[str, list[float]] = {"docker_create": [], "docker_start": []}
    for action, at, _ in events:
        if action in ("create", "start"):
            stages[f"docker_{action}"].append(at - t0)
    return stages


class SmallCase:
    def __init__(self, root: Path, workers: int, replicas: int) -> None:
        self.root = root
        self.dir = root / "cluster"
        self.replicas = replicas
        self.workers = workers
        self.env = {**os.environ, "MINISW_CONFIG": str(root / "config")}  # keep the user's CLI context
        self.host = "127.77.0.11:4242"
        self.tls_dir = str(self.dir / "manager1" / "operator-tls")
        self.client: Client | None = None

    # ---- the cluster -------------------------------------------------------------------------
    def up(self) -> None:
        self._minisw("dev", "up", "--dir", str(self.dir), "--workers", str(self.workers))
        self.client = Client(self.host, self.tls_dir)
        agents = 1 + self.workers

        def ready() -> bool:
            nodes = self._call("ListNodes", api.ListNodesRequest()).nodes
            return bool(sum(n.status.state == pb.NodeStatus.READY for n in nodes) == agents)

        self._wait(ready, 60, "the agents")

    def down(self) -> None:
        if self.client is not None:
            self.client.close()
        self._minisw("dev", "down", "--dir", str(self.dir), check=False)

    def _minisw(self, *args: str, check: bool = True) -> None:
        proc = subprocess.run(
            [*_minisw_command(), "--host", self.host, "--tls-dir", self.tls_dir, *args],
            env=self.env,
            capture_output=True,
            text=True,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"minisw {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")

    def _call(self, method: str, request: Any) -> Any:
        assert self.client is not None
        return self.client.call(method, request, timeout=10)

    @staticmethod
    def _wait(check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(POLL)
        raise TimeoutError(f"timed out waiting for {what}")

    @staticmethod
    def _containers(label: str) -> list[str]:
        out = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label={label}"], check=True, capture_output=True, text=True
        ).stdout
        return out.split()

    # ---- (a) the floor -----------------------------------------------------------------------
    def floor(self, run: str) -> tuple[float, dict[str, list[float]]]:
        label = f"{FLOOR_LABEL}={run}"

        def docker_run(_: int) -> None:
            subprocess.run(["docker", "run", "-d", "--label", label, IMAGE], check=True, capture_output=True)

        wall0, t0 = time.time(), time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(self.replicas) as pool:
            list(pool.map(docker_run, range(self.replicas)))
        elapsed = time.monotonic() - t0
        wall1 = time.time()
        running = subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label={label}", "--filter", "status=running"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        if len(running) != self.replicas:
            raise RuntimeError(f"floor: {len(running)} of {self.replicas} containers running")
        trace = _event_stages(_docker_events(wall0, wall1 + 0.5, label), wall0)
        subprocess.run(["docker", "rm", "-f", *self._containers(label)], check=True, capture_output=True)
        return elapsed, trace

    # ---- (b) minisw --------------------------------------------------------------------------
    def minisw(self, name: str) -> tuple[float, dict[str, list[float]]]:
        seen: dict[str, dict[str, float]] = {}  # task ID -> stage -> seconds since t0
        wall0, t0 = time.time(), time.monotonic()
        create = subprocess.Popen(
            [
                *_minisw_command(),
                "--host",
                self.host,
                "--tls-dir",
                self.tls_dir,
                "service",
                "create",
                "-d",
                "--name",
                name,
                "--replicas",
                str(self.replicas),
                IMAGE,
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = t0 + 120
        while True:
            if create.poll() not in (None, 0):
                raise RuntimeError(f"service create failed: {create.stderr.read().decode() if create.stderr else ''}")
            tasks = (
                [] if create.poll() is None else self._call("ListTasks", api.ListTasksRequest(service_ids=[name])).tasks
            )
            now = time.time() - wall0
            running = 0
            for t in tasks:
                stages = seen.setdefault(t.id, {})
                state = pb.TaskState.Name(t.status.state)
                at = _ts(t.status.timestamp)
                if state not in stages and at is not None:
                    stages[state] = at - wall0
                if t.status.state == pb.RUNNING and t.desired_state == pb.RUNNING:
                    running += 1
                    applied = _ts(t.status.applied_at)
                    if applied is not None:
                        stages.setdefault("running_applied", applied - wall0)
                    stages.setdefault("seen_running", now)
                created = _ts(t.meta.created_at)
                if created is not None:
                    stages.setdefault("task_created", created - wall0)
            if running == self.replicas:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: {running} of {self.replicas} running after 120 s")
            time.sleep(POLL)
        elapsed = time.monotonic() - t0
        wall1 = time.time()
        service = self._call("GetService", api.GetServiceRequest(service_id=name)).service
        trace: dict[str, list[float]] = {stage: [] for stage in STAGES}
        trace["service_created"] = [(_ts(service.meta.created_at) or wall0) - wall0]
        for stages in seen.values():
            for stage, at in stages.items():
                trace.setdefault(stage, []).append(at)
        trace.update(_event_stages(_docker_events(wall0, wall1 + 0.5, f"minisw.service.name={name}"), wall0))

        self._minisw("service", "rm", name)
        self._wait(lambda: not self._containers(f"minisw.service.name={name}"), 60, f"{name}'s containers to go")
        return elapsed, trace


def _median_trace(traces: list[dict[str, list[float]]], order: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Per stage: the first and the last task to reach it, and how many tasks the poll saw there."""
    out = {}
    for stage in order:
        runs = [t[stage] for t in traces if t.get(stage)]
        if runs:
            out[stage] = {
                "first": round(statistics.median(min(r) for r in runs), 3),
                "last": round(statistics.median(max(r) for r in runs), 3),
                "tasks_seen": round(statistics.median(len(r) for r in runs)),
            }
    return out


def main() -> None:
    parser = runs_parser(__doc__ or "")
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--workers", type=int, default=0, help="agents besides the manager's (same daemon)")
    args = parser.parse_args()
    floors: list[float] = []
    mine: list[float] = []
    floor_traces: list[dict[str, list[float]]] = []
    traces: list[dict[str, list[float]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-small-") as tmp:
        case = SmallCase(Path(tmp), args.workers, args.replicas)
        try:
            case.up()
            for i in range(args.runs + 1):  # pair 0 warms up
                pair: dict[str, tuple[float, dict[str, list[float]]]] = {}
                order = ("floor", "minisw") if i % 2 else ("minisw", "floor")
                for side in order:
                    pair[side] = case.floor(f"r{i}") if side == "floor" else case.minisw(f"small{i}")
                if i == 0:
                    continue
                floors.append(pair["floor"][0])
                mine.append(pair["minisw"][0])
                floor_traces.append(pair["floor"][1])
                traces.append(pair["minisw"][1])
        finally:
            case.down()
    ratios = [m / f for m, f in zip(mine, floors, strict=True)]
    out: dict[str, Any] = {
        "replicas": args.replicas,
        "agents": 1 + args.workers,
        "floor_s": figure(floors, 2),
        "minisw_s": figure(mine, 2),
        "ratio": figure(ratios, 2),
        "target": {"ratio.median": "<= 1.3"},
        "trace": _median_trace(traces, STAGES),
        "floor_trace": _median_trace(floor_traces, ("docker_create", "docker_start")),
        "pairs": [{"floor_s": round(f, 3), "minisw_s": round(m, 3)} for f, m in zip(floors, mine, strict=True)],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

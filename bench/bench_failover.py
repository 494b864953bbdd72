"""Failover as a client sees it, on 3 real ``minisw manager`` processes (loopback, mutual TLS);
prints one JSON object, every figure the median of ``--runs`` runs with its spread (``figures.py``).

- ``cli_write_after_leader_kill_seconds``: from ``kill -9`` of the leader to the exit of ONE
  ``minisw service create -d`` sent at once through a follower (a fresh CLI process, its start-up
  included): the first attempt must succeed, or the run fails. Target: <= 1.5 s.
- ``first_attempt_successes``: how many runs' single CLI write succeeded (should equal ``runs``).

Each run starts a fresh cluster. Run: ``python bench/bench_failover.py`` (about 20 s a run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import figure, runs_parser
from tests.support.cluster import Cluster, minisw_command

TARGET_SECONDS = 1.5


def _one_run(tmp: str) -> tuple[float, bool, str]:
    c = Cluster(Path(tmp) / "cluster")
    c.root.mkdir(parents=True)
    try:
        c.start_managers(3)
        c.cli_ok("service", "create", "-d", "--name", "before", "minisw/web:1")
        leader = c.leader()
        follower = c.followers()[0]
        command = minisw_command(
            "--host", follower.addr, "--tls-dir", str(c.tls_dir), "service", "create", "-d", "--name", "after",
            "minisw/web:1",
        )  # fmt: skip
        leader.kill()
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, env={**os.environ, **c.env})
        elapsed = time.monotonic() - started
        return elapsed, result.returncode == 0, result.stderr.strip()
    finally:
        c.teardown()


def main() -> None:
    args = runs_parser(__doc__ or "").parse_args()
    times: list[float] = []
    successes = 0
    errors: list[str] = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix=f"bench-failover-{i}-") as tmp:
            elapsed, ok, stderr = _one_run(tmp)
        times.append(elapsed)
        successes += ok
        if not ok:
            errors.append(stderr)
    print(
        json.dumps(
            {
                "cli_write_after_leader_kill_seconds": figure(times, 2),
                "target_seconds": TARGET_SECONDS,
                "first_attempt_successes": successes,
                "runs": args.runs,
                "errors": errors,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""The real `docker` CLI against minisw's Engine API and against Docker's own Swarm mode; prints one
JSON object. Every figure is the median of ``--runs`` runs (default 10), with its spread.

- ``service_ls_seconds``: ``docker service ls`` with ``--services`` services present;
- ``service_create_detached_seconds``: ``docker service create -d --no-resolve-image`` of a new
  service (minisw/web:1), from start to exit of the CLI process.

Both are the wall time of the ``docker`` process, handshake included. Sides:

- ``minisw_tls``: a one-manager minisw cluster (no agents: nothing here waits for tasks), the
  CLI with ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH`` on the default port (control + 3);
- ``minisw_unix``: the same manager's unix socket (``--engine-api unix://...``), as Docker's;
- ``docker_swarm``: a one-node swarm on a dockerd of the benchmark's own (``private_dockerd.py``,
  never the machine's daemon), through its unix socket. Removed afterwards.

Target: minisw no slower than Swarm. Run: ``python bench/bench_engine_api.py`` (about two minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import figure, runs_parser
from bench.private_dockerd import private_dockerd
from bench.swarm_mode import SwarmMode
from tests.support.cluster import Cluster, poll_until

IMAGE = "minisw/web:1"


def _timed(env: dict[str, str], *args: str) -> float:
    start = time.perf_counter()
    result = subprocess.run(["docker", *args], capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {result.stderr}")
    return elapsed


def _measure(env: dict[str, str], runs: int, services: int, prefix: str) -> dict[str, Any]:
    for i in range(services):
        _timed(env, "service", "create", "-d", "--no-resolve-image", "--name", f"{prefix}-base{i}", IMAGE)
    ls = [_timed(env, "service", "ls") for _ in range(runs)]
    create = [
        _timed(env, "service", "create", "-d", "--no-resolve-image", "--name", f"{prefix}-new{i}", IMAGE)
        for i in range(runs)
    ]
    return {"service_ls_seconds": figure(ls), "service_create_detached_seconds": figure(create)}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = tempfile.mkdtemp(prefix="bench-docker-config-")
    return {**env, **extra}


def minisw(runs: int, services: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        c = Cluster(Path(tmp))
        c.root.mkdir(parents=True, exist_ok=True)
        sock = Path(tmp, "engine.sock")
        try:
            tls_host = f"{c.subnet}.11:4245"  # what add_manager will use: the first address, control port + 3
            c.add_manager(extra=["--engine-api", tls_host, "--engine-api", f"unix://{sock}"])
            poll_until(sock.exists, 30, what="the Engine API socket")
            unix = _clean_env(DOCKER_HOST=f"unix://{sock}")
            out = {"minisw_unix": _measure(unix, runs, services, "u")}
            tls = _clean_env(DOCKER_HOST=f"tcp://{tls_host}", DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(c.tls_dir))
            out["minisw_tls"] = _measure(tls, runs, 0, "t")
            return out
        finally:
            c.teardown()


def swarm(runs: int, services: int) -> dict[str, Any]:
    with private_dockerd("engineapi", [IMAGE]) as daemon, SwarmMode(daemon.host):
        env = _clean_env(DOCKER_HOST=daemon.host)
        return _measure(env, runs, services, "s")


def main() -> None:
    parser = runs_parser(__doc__ or "")
    parser.set_defaults(runs=10)
    parser.add_argument("--services", type=int, default=5, help="services present during `service ls`")
    args = parser.parse_args()
    sides: dict[str, Callable[[int, int], dict[str, Any]]] = {"minisw": minisw, "docker_swarm": swarm}
    result: dict[str, Any] = {}
    for name, run in sides.items():
        measured = run(args.runs, args.services)
        result.update(measured if name == "minisw" else {name: measured})
    for key in ("service_ls_seconds", "service_create_detached_seconds"):
        theirs = result["docker_swarm"][key]["median"]
        result[f"{key}_minisw_unix_vs_swarm"] = round(result["minisw_unix"][key]["median"] / theirs, 3)
        result[f"{key}_minisw_tls_vs_swarm"] = round(result["minisw_tls"][key]["median"] / theirs, 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

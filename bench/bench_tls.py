"""What mutual TLS costs: the same build with and without it (MINISW_INSECURE=1, a test-only
switch). Prints one JSON object; every figure is the median of ``--runs`` runs (a fresh cluster
each, plaintext and mTLS taking turns), with its spread (see ``figures.py``).

- ``calls_per_second``: unary control API calls (ListServices) from 8 client threads on one channel;
- ``create_to_running_seconds``: ``service create --replicas 10`` until 10 tasks run (1 agent).

Run: ``python bench/bench_tls.py`` (about a minute; ``--runs 1`` to try it).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import figure, runs_parser
from minisw.proto import control_pb2 as api
from minisw.proto import control_pb2_grpc as api_grpc
from tests.support.cluster import Cluster, poll_until

CALLS, THREADS = 3000, 8


def _measure(tmp: str, tls: bool) -> dict[str, float]:
    if tls:
        os.environ.pop("MINISW_INSECURE", None)
    else:
        os.environ["MINISW_INSECURE"] = "1"
    c = Cluster(Path(tmp, "tls" if tls else "plain"), env={} if tls else {"MINISW_INSECURE": "1"})
    c.root.mkdir(parents=True)
    try:
        c.start_managers(1)
        c.add_agent()
        with c.managers[0].stub_channel() as channel:
            stub = api_grpc.ControlStub(channel)
            stub.ListServices(api.ListServicesRequest(), timeout=5)

            def worker() -> None:
                for _ in range(CALLS // THREADS):
                    stub.ListServices(api.ListServicesRequest(), timeout=5)

            threads = [threading.Thread(target=worker) for _ in range(THREADS)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rate = CALLS // THREADS * THREADS / (time.perf_counter() - t0)
        t0 = time.monotonic()
        c.cli_ok("service", "create", "-d", "--name", "bench", "--replicas", "10", "minisw/web:1")
        poll_until(lambda: len(c.running_tasks("bench")) == 10, 120, interval=0.02)
        create = time.monotonic() - t0
        return {"calls_per_second": rate, "create_to_running_seconds": create}
    finally:
        c.teardown()
        os.environ.pop("MINISW_INSECURE", None)


def main() -> None:
    args = runs_parser(__doc__ or "").parse_args()
    runs: dict[str, list[dict[str, float]]] = {"plaintext": [], "mtls": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            runs["plaintext"].append(_measure(f"{tmp}/run{i}", tls=False))
            runs["mtls"].append(_measure(f"{tmp}/run{i}", tls=True))
    out = {mode: {key: figure((r[key] for r in rs), 2) for key in rs[0]} for mode, rs in runs.items()}
    plain, tls = out["plaintext"], out["mtls"]
    print(
        json.dumps(
            {
                **out,
                "calls_cost_percent_by_median": round(
                    100 * (1 - tls["calls_per_second"]["median"] / plain["calls_per_second"]["median"]), 1
                ),
                "create_cost_percent_by_median": round(
                    100
                    * (tls["create_to_running_seconds"]["median"] / plain["create_to_running_seconds"]["median"] - 1),
                    1,
                ),
                "target": "within 15 %",
            }
        )
    )


if __name__ == "__main__":
    main()

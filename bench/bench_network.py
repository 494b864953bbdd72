"""Service networking throughput across separate hosts; prints one JSON object.

One service (`web`, 2 replicas on the two workers, on the overlay network `appnet` and publishing
8080) and a load generator on the manager's host, which runs no `web` task, so every request
crosses to another host. Three paths to the same tasks, taken in turn in each run:

- ``direct``: the tasks' own addresses, round-robin in the client (routed to the other hosts'
  parts of the network; no NAT);
- ``vip``: the service's virtual IP (the client's host DNATs each connection in nftables);
- ``ingress``: the published port on the manager host's own address (DNAT and masquerade there).

Each request is a fresh TCP connection (`GET /` over HTTP/1.0, as a load balancer sees new
flows), ``--concurrency`` at a time for ``--seconds``. Figures: requests per second and the 99th
percentile latency in ms, medians of ``--runs`` runs, and ``vip_over_direct`` /
``ingress_over_direct`` (targets >= 0.8 and >= 0.6).

Run as root: ``python bench/bench_network.py`` (about two minutes; ``--runs 1`` to try it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PATHS = ("direct", "vip", "ingress")


# ---- the load generator (runs inside the client host's namespace) ---------------------------
async def _one(addr: str, port: int, source: str) -> float:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(addr, port, local_addr=(source, 0) if source else None)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    await writer.drain()
    body = await reader.read()
    writer.close()
    if b"minisw/web" not in body:
        raise RuntimeError(f"unexpected answer from {addr}:{port}: {body[:80]!r}")
    return time.perf_counter() - started


async def _load(targets: list[tuple[str, int]], source: str, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    turn = 0

    async def worker() -> None:
        nonlocal errors, turn
        while time.perf_counter() < deadline:
            addr, port = targets[turn % len(targets)]
            turn += 1
            try:
                latencies.append(await asyncio.wait_for(_one(addr, port, source), 5))
            except (OSError, TimeoutError, RuntimeError):
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))] if latencies else 0.0
    return {"rps": len(latencies) / elapsed, "p99_ms": p99 * 1000, "errors": errors, "requests": len(latencies)}


def client_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", action="append", required=True, help="ADDR:PORT (repeatable)")
    parser.add_argument("--source", default="")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    targets = [(t.rpartition(":")[0], int(t.rpartition(":")[2])) for t in args.target]
    print(json.dumps(asyncio.run(_load(targets, args.source, args.concurrency, args.seconds))))


# ---- the benchmark -----------------------------------------------------------------------------
def _in_host(netns: str, targets: list[str], source: str, concurrency: int, seconds: float) -> dict[str, Any]:
    cmd = ["ip", "netns", "exec", netns, sys.executable, __file__, "--client"]
    for target in targets:
        cmd += ["--target", target]
    cmd += ["--source", source, "--concurrency", str(concurrency), "--seconds", str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def main() -> None:
    from bench.figures import figure, runs_parser
    from minisw.agent.networking import bridge_name
    from minisw.proto import control_pb2 as api
    from tests.support.hosts import HostsCluster

    parser = runs_parser(__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    samples: dict[str, dict[str, list[float]]] = {p: {"rps": [], "p99_ms": []} for p in PATHS}
    errors = {p: 0 for p in PATHS}
    with tempfile.TemporaryDirectory() as tmp:
        hosts = HostsCluster(Path(tmp), managers=1, workers=2)
        try:
            hosts.up()
            hosts.cli_ok("network", "create", "-d", "overlay", "appnet")
            hosts.cli_ok("service", "create", "--detach", "--name", "web", "--replicas", "2", "--network", "appnet",
                         "-p", "8080:80", "--constraint", "node.role==worker", "--placement-pref", "spread=node.id",
                         "minisw/web:1")  # fmt: skip
            # A task of the network on the client's host gives it the network's bridge, whose
            # address (inside the network) is where the VIP accepts connections from.
            hosts.cli_ok("service", "create", "--detach", "--name", "anchor", "--network", "appnet",
                         "--constraint", "node.role==manager", "minisw/web:1")  # fmt: skip
            hosts.wait_running("web", 2)
            hosts.wait_running("anchor", 1)
            network = hosts.stub_call("GetNetwork", api.GetNetworkRequest(network_id="appnet")).network
            web = hosts.stub_call("GetService", api.GetServiceRequest(service_id="web")).service
            vip = next(v.addr.split("/")[0] for v in web.endpoint.virtual_ips if v.network_id == network.id)
            tasks = [a.addr for t in hosts.running("web") for a in t.status.networks if a.network_id == network.id]
            client = hosts.process("manager1", "agent")
            netns = client["netns"]
            show = subprocess.run(
                ["ip", "netns", "exec", netns, "ip", "-4", "-o", "addr", "show", "dev", bridge_name(network)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            source = show.split()[3].split("/")[0]
            node_addr = hosts.address("manager1")
            targets = {
                "direct": [f"{t}:80" for t in tasks],
                "vip": [f"{vip}:80"],
                "ingress": [f"{node_addr}:8080"],
            }
            _in_host(netns, targets["direct"], source, args.concurrency, 1.0)  # warm up
            for _ in range(args.runs):
                for path in PATHS:
                    result = _in_host(netns, targets[path], source, args.concurrency, args.seconds)
                    samples[path]["rps"].append(result["rps"])
                    samples[path]["p99_ms"].append(result["p99_ms"])
                    errors[path] += int(result["errors"])
        finally:
            hosts.dev("down", check=False)
    out: dict[str, Any] = {
        "what": "HTTP GET, a new TCP connection per request, from a host with no web task to 2 tasks on 2 other hosts",
        "concurrency": args.concurrency,
        "seconds_per_sample": args.seconds,
    }
    for path in PATHS:
        out[f"{path}_requests_per_second"] = figure(samples[path]["rps"], 1)
        out[f"{path}_p99_ms"] = figure(samples[path]["p99_ms"], 2)
        out[f"{path}_errors"] = errors[path]
    direct = statistics.median(samples["direct"]["rps"])
    out["vip_over_direct"] = round(statistics.median(samples["vip"]["rps"]) / direct, 3)
    out["ingress_over_direct"] = round(statistics.median(samples["ingress"]["rps"]) / direct, 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
    else:
        main()

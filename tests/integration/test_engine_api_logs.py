"""The real `docker service logs` (28.2.2) and docker-py's `.logs()` against a minisw manager's Engine
API, for a service on 2 agents, compared with what `minisw service logs` prints for the same
service: the prefixes, stdout and stderr kept apart, --tail, --no-task-ids, -t, --raw, --details,
--since, one task, -f, docker's errors; and the stream itself (stdcopy frames, content type)."""

from __future__ import annotations

import os
import queue
import re
import ssl
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.integration.test_engine_api import docker, docker_ok, engine_addr
from tests.support.cluster import Cluster, poll_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.docker,
]

# Two lines on stdout and one on stderr, in this order, then idle (the pause orders Docker's stamps).
STATIC = (
    'echo "out-one"; echo "err-one" >&2; sleep 0.3; echo "out-two"; trap "exit 0" TERM; while true; do sleep 1; done'
)
TICKER = 'trap "exit 0" TERM; i=0; while true; do i=$((i+1)); echo "tick-$i"; sleep 0.3; done'
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("engine-logs"))
    try:
        c.start_managers(3)
        c.add_agent("w1")
        c.add_agent("w2")
        c.cli_ok("service", "create", "--name", "web", "--replicas", "3", "minisw/web:1", "sh", "-c", STATIC)
        poll_until(lambda: c.cli_ok("service", "logs", "web").count("out-two") == 3, 60, what="every task's lines")
        yield c
        if request.session.testsfailed:
            print(c.logs())
    finally:
        c.teardown()


def prefixes(c: Cluster) -> dict[str, str]:
    """Task ID -> `web.<slot>.<id>@<node>`, for the running tasks."""
    names = {n.id: n.description.hostname for n in c.nodes()}
    return {t.id: f"web.{t.slot}.{t.id[:12]}@{names[t.node_id]}" for t in c.running_tasks("web")}


def same_output(c: Cluster, *args: str) -> tuple[str, str]:
    """`docker service logs ARGS` and `minisw service logs ARGS` print the same lines on the same
    streams (tasks on different nodes interleave differently; each task's lines keep their order)."""
    ours = c.cli("service", "logs", *args)
    theirs = docker(c, "service", "logs", *args)
    assert ours.returncode == 0 and theirs.returncode == 0, (ours, theirs)
    for mine, docker_text in ((ours.stdout, theirs.stdout), (ours.stderr, theirs.stderr)):
        assert sorted(docker_text.splitlines()) == sorted(mine.splitlines()), f"docker:\n{docker_text}\nminisw:\n{mine}"
    for prefix in prefixes(c).values():
        order = [line for line in theirs.stdout.splitlines() if prefix in line]
        assert order == [line for line in ours.stdout.splitlines() if prefix in line]
    return theirs.stdout, theirs.stderr


def test_docker_service_logs_prints_what_minisw_prints(cluster: Cluster) -> None:
    c = cluster
    tasks = prefixes(c)
    assert len(tasks) == 3 and len({t.node_id for t in c.running_tasks("web")}) == 2  # both agents

    out, err = same_output(c, "web")
    assert sorted(out.splitlines()) == sorted(f"{p}    | out-{n}" for p in tasks.values() for n in ("one", "two"))
    assert sorted(err.splitlines()) == sorted(f"{p}    | err-one" for p in tasks.values())

    out, err = same_output(c, "--tail", "1", "web")
    assert sorted(out.splitlines()) == sorted(f"{p}    | out-two" for p in tasks.values()) and err == ""
    out, err = same_output(c, "--no-task-ids", "web")
    assert all(re.fullmatch(r"web\.[123]@w[12]    \| out-(one|two)", line) for line in out.splitlines()), out
    out, err = same_output(c, "-t", "--tail", "2", "web")  # Docker's own timestamps, on both sides
    stamped = (out + err).splitlines()
    assert len(stamped) == 6 and all(re.match(rf"{STAMP} web\.[123]\.", line) for line in stamped), stamped
    out, _ = same_output(c, "--raw", "web")
    assert sorted(out.splitlines()) == ["out-one"] * 3 + ["out-two"] * 3
    out, _ = same_output(c, "--details", "--tail", "1", "web")
    assert sorted(out.splitlines()) == sorted(f"{p}    |  out-two" for p in tasks.values())
    out, _ = same_output(c, "--raw", "--details", "--tail", "1", "web")
    contexts = {
        f"com.docker.swarm.node.id={t.node_id},com.docker.swarm.service.id={t.service_id},"
        f"com.docker.swarm.task.id={t.id} out-two"
        for t in c.running_tasks("web")
    }
    assert set(out.splitlines()) == contexts
    same_output(c, "--since", "1h", "web")
    out, err = same_output(c, "--since", str(int(time.time()) + 2), "web")
    assert out == err == ""

    # One task, by full ID and by prefix.
    task_id = sorted(tasks)[0]
    for ref in (task_id, task_id[:10]):
        out, err = same_output(c, ref)
        assert out.splitlines() == [f"{tasks[task_id]}    | out-one", f"{tasks[task_id]}    | out-two"]
        assert err.splitlines() == [f"{tasks[task_id]}    | err-one"]
    # A follower's Engine API relays the subscription to the leader.
    via_follower = docker(c, "service", "logs", "--tail", "1", "web", manager=c.followers()[0])
    assert via_follower.returncode == 0, via_follower.stderr
    assert sorted(via_follower.stdout.splitlines()) == sorted(f"{p}    | out-two" for p in tasks.values())


def test_docker_service_logs_errors_match_minisw(cluster: Cluster) -> None:
    c = cluster
    for args in (["nosuch"], ["--tail", "ten", "web"], ["--tail", "-1", "web"]):
        ours, theirs = c.cli("service", "logs", *args), docker(c, "service", "logs", *args)
        assert theirs.returncode == ours.returncode == 1, (theirs, ours)
        assert theirs.stdout == ours.stdout == ""
        assert theirs.stderr.strip().removeprefix("Error response from daemon: ") in ours.stderr, (theirs, ours)
    assert docker(c, "service", "logs", "nosuch").stderr.strip() == "no such task or service: nosuch"
    assert docker(c, "service", "logs", "--tail", "ten", "web").stderr.strip() == (
        'Error response from daemon: tail value must be a positive integer or "all"'
    )


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


class DockerFollowing:
    """`docker service logs -f ARGS` in the background; its stdout lines arrive on a queue."""

    def __init__(self, c: Cluster, *args: str) -> None:
        env = {
            **os.environ,
            "DOCKER_HOST": f"tcp://{engine_addr(c.managers[0])}",
            "DOCKER_TLS_VERIFY": "1",
            "DOCKER_CERT_PATH": str(c.tls_dir),
            "DOCKER_CONFIG": str(c.root / "docker-config"),
        }
        self.proc = subprocess.Popen(
            ["docker", "service", "logs", "-f", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.decode().rstrip("\n"))

    def next(self, timeout: float = 10) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout}s; exit {self.proc.poll()}") from None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def test_docker_service_logs_follow(cluster: Cluster) -> None:
    c = cluster
    c.cli_ok("service", "create", "--name", "ticker", "minisw/web:1", "sh", "-c", TICKER)
    try:
        poll_until(lambda: len(c.running_tasks("ticker")) == 1, 60, what="ticker running")
        following = DockerFollowing(c, "--tail", "1", "--no-task-ids", "ticker")
        try:
            first = following.next(30)
            match = re.fullmatch(r"ticker\.1@w[12]    \| tick-(\d+)", first)
            assert match, first
            # Each new line arrives as the container writes it, in order, and the command keeps following.
            start = int(match.group(1))
            seen = [following.next() for _ in range(4)]
            assert seen == [first.replace(f"tick-{start}", f"tick-{start + i}") for i in range(1, 5)]
            assert following.proc.poll() is None
        finally:
            following.stop()
    finally:
        c.cli_ok("service", "rm", "ticker")


def test_a_quiet_followed_stream_ends_when_the_client_leaves(cluster: Cluster) -> None:
    c = cluster
    agents = [a.pid for a in c.agents]
    docker_ok(c, "service", "logs", "web")  # readers come and go; their threads end with them
    idle = sum(_threads(pid) for pid in agents)
    following = DockerFollowing(c, "web")  # "web" has printed all it will print
    try:
        assert sorted(following.next(30).rsplit("| ", 1)[1] for _ in range(6)) == ["out-one"] * 3 + ["out-two"] * 3
        # While the client waits, each agent follows its tasks' stdout and stderr, on a thread each.
        poll_until(lambda: sum(_threads(pid) for pid in agents) >= idle + 6, 10, what="the agents following")
    finally:
        following.stop()
    # Nothing more to write, so only the connection tells the manager that the client left: it
    # ends the subscription, and the agents stop reading Docker's logs.
    poll_until(lambda: sum(_threads(pid) for pid in agents) <= idle, 20, what="the agents to stop following")


def test_docker_py_service_logs(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    import docker as docker_sdk

    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)  # the cluster's CA must win (psf/requests#3829)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    c = cluster
    tls = docker_sdk.tls.TLSConfig(
        client_cert=(str(c.tls_dir / "cert.pem"), str(c.tls_dir / "key.pem")),
        ca_cert=str(c.tls_dir / "ca.pem"),
        verify=True,
    )
    client = docker_sdk.DockerClient(base_url=f"https://{engine_addr(c.managers[0])}", tls=tls)
    try:
        service = client.services.get("web")
        raw = c.cli_ok("service", "logs", "--raw", "web").splitlines()
        both = b"".join(service.logs(stdout=True, stderr=True)).decode().splitlines()
        assert sorted(both) == sorted(raw + ["err-one"] * 3)
        only_out = b"".join(service.logs(stdout=True)).decode().splitlines()
        assert sorted(only_out) == sorted(raw) == ["out-one"] * 3 + ["out-two"] * 3
        stamped = b"".join(service.logs(stdout=True, stderr=True, timestamps=True, tail=1)).decode()
        assert sorted(line.split(" ", 1)[1] for line in stamped.splitlines()) == ["out-two"] * 3
        assert all(re.match(STAMP, line) for line in stamped.splitlines())
        with pytest.raises(docker_sdk.errors.APIError, match="you must choose at least one stream"):
            b"".join(service.logs())
    finally:
        client.close()


def _get(c: Cluster, path: str) -> tuple[int, str, bytes]:
    context = ssl.create_default_context(cafile=str(c.tls_dir / "ca.pem"))
    context.load_cert_chain(c.tls_dir / "cert.pem", c.tls_dir / "key.pem")
    url = f"https://{engine_addr(c.managers[0])}{path}"
    try:
        with urllib.request.urlopen(url, context=context, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def _frames(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    while body:
        stream, length = struct.unpack(">BxxxL", body[:8])
        out.append((stream, body[8 : 8 + length]))
        body = body[8 + length :]
    return out


def test_the_stream_is_moby_s(cluster: Cluster) -> None:
    c = cluster
    status, content_type, body = _get(c, "/v1.50/services/web/logs?stdout=1&stderr=1&tail=all")
    assert (status, content_type) == (200, "application/vnd.docker.multiplexed-stream")
    frames = _frames(body)  # one line per frame: 1 = stdout, 2 = stderr
    assert sorted(frames) == sorted([(1, b"out-one\n"), (1, b"out-two\n"), (2, b"err-one\n")] * 3)
    # API < 1.42: the same frames under the raw-stream type, as moby sends them.
    status, content_type, body = _get(c, "/v1.41/services/web/logs?stdout=1&stderr=0&tail=1")
    assert (status, content_type) == (200, "application/vnd.docker.raw-stream")
    assert _frames(body) == [(1, b"out-two\n")] * 3
    status, _, body = _get(c, "/v1.50/services/web/logs")
    assert (status, body) == (400, b'{"message": "Bad parameters: you must choose at least one stream"}')
    status, _, body = _get(c, "/v1.50/tasks/nosuch/logs?stdout=1")
    assert (status, body) == (404, b'{"message": "task nosuch not found"}')
    status, _, body = _get(c, "/v1.50/services/web/logs?stdout=1&since=yesterday")
    assert status == 400 and b"could not parse since timestamp" in body

"""The cluster's PKI over real processes: join tokens, mutual TLS, roles, renewal, revocation, Raft."""

from __future__ import annotations

import datetime as dt
import io
import pickle
import socket
import struct
import time
import zlib
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from minisw.manager.ca import RootCA
from minisw.proto import control_pb2 as api
from minisw.proto import control_pb2_grpc as api_grpc
from minisw.proto import dispatcher_pb2 as dpb
from minisw.proto import dispatcher_pb2_grpc as dpb_grpc
from minisw.proto.pki import MANAGER_OU, new_key_and_csr
from tests.support.cluster import Cluster, ManagerProc, operator_channel, poll_until

pytestmark = pytest.mark.slow


def exited(proc: object, timeout: float = 20.0) -> int:
    popen = proc.popen  # type: ignore[attr-defined]
    return int(popen.wait(timeout))


def test_bad_tokens_are_refused_and_the_joiner_exits(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    good = c.cluster().join_tokens.worker
    prefix, digest, _ = good.rsplit("-", 2)
    wrong_secret = f"{prefix}-{digest}-{'0' * 25}"
    agent = c.add_agent("wrong", token=wrong_secret, wait=False)
    assert exited(agent) != 0
    assert "A valid join token is necessary to join this cluster" in agent.log_tail()

    other_digest = f"{prefix}-{'1' * 50}-{good.rsplit('-', 1)[1]}"
    agent = c.add_agent("foreign", token=other_digest, wait=False)
    assert exited(agent) != 0
    assert "does not match the cluster" in agent.log_tail()

    c.cli_ok("join-token", "--rotate", "worker")
    agent = c.add_agent("stale", token=good, wait=False)
    assert exited(agent) != 0
    assert "not current (rotated" in agent.log_tail()
    fresh = c.cluster().join_tokens.worker
    assert fresh != good and fresh.split("-")[2] == digest  # same CA, new secret
    c.add_agent("fresh", token=fresh)  # joins

    manager_token = c.cluster().join_tokens.manager
    bad = c.add_manager(wait=False, token=manager_token[:-25] + "0" * 25)
    assert exited(bad) != 0
    assert "join refused" in bad.log_tail() and "A valid join token is necessary" in bad.log_tail()


def test_an_unreachable_manager_is_retried(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    token = c.cluster().join_tokens.worker
    c.managers[0].addr, real = f"{c.subnet}.99:4242", c.managers[0].addr  # nobody listens there
    agent = c.add_agent("patient", token=token, wait=False)
    c.managers[0].addr = real
    time.sleep(3)
    assert agent.running(), agent.log_tail()
    assert "retrying" in agent.log_tail()


def test_plaintext_and_foreign_certificates_are_refused(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    addr = c.managers[0].addr
    with grpc.insecure_channel(addr) as channel, pytest.raises(grpc.RpcError) as err:
        api_grpc.ControlStub(channel).ListServices(api.ListServicesRequest(), timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    # A certificate from a CA of our own, even one claiming the manager role and this cluster.
    rogue = RootCA.create()
    key, csr = new_key_and_csr()
    cluster_id = c.cluster().id
    cert = rogue.sign(csr, "intruder", MANAGER_OU, cluster_id, dt.timedelta(hours=1))
    real_ca = (c.tls_dir / "ca.pem").read_bytes()
    creds = grpc.ssl_channel_credentials(root_certificates=real_ca, private_key=key, certificate_chain=cert)
    options = [("grpc.ssl_target_name_override", "swarm-manager")]
    with grpc.secure_channel(addr, creds, options=options) as channel, pytest.raises(grpc.RpcError) as err:
        api_grpc.ControlStub(channel).ListServices(api.ListServicesRequest(), timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # Without any client certificate, the control port refuses too; the join port only issues.
    creds = grpc.ssl_channel_credentials(root_certificates=real_ca)
    with grpc.secure_channel(addr, creds, options=options) as channel, pytest.raises(grpc.RpcError):
        api_grpc.ControlStub(channel).ListServices(api.ListServicesRequest(), timeout=3)
    host, _, port = addr.rpartition(":")
    with grpc.secure_channel(f"{host}:{int(port) + 2}", creds, options=options) as channel:
        with pytest.raises(grpc.RpcError) as err:
            api_grpc.ControlStub(channel).ListServices(api.ListServicesRequest(), timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "client certificate" in (err.value.details() or "")
    assert c.cli_json("service", "ls", "--format", "json") == []


def test_a_worker_certificate_cannot_use_the_control_api(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    agent = c.add_agent()
    result = c.cli("--tls-dir", str(Path(agent.data_dir, "tls")), "service", "ls")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error response from daemon: This node is not a swarm manager. Worker nodes can't be used to view or "
        "modify cluster state. Please run this command on a manager node or promote the current node to a manager."
    )


def test_a_node_heartbeats_only_for_itself(cluster_factory: type) -> None:
    """A heartbeat must name the certificate's own node, and a session of that node."""
    c: Cluster = cluster_factory().start_managers(1)
    worker = c.add_agent("w1")
    other = c.add_agent("w2")
    ids = {n.description.hostname: n.id for n in c.nodes()}

    def refusal(node_id: str) -> grpc.RpcError:
        with operator_channel(c.leader().addr, Path(worker.data_dir, "tls")) as channel:  # the worker's certificate
            with pytest.raises(grpc.RpcError) as refused:
                dpb_grpc.DispatcherStub(channel).Heartbeat(
                    dpb.HeartbeatRequest(node_id=node_id, session_id="not-a-session"), timeout=10
                )
            return refused.value  # type: ignore[return-value]

    impersonating = refusal(ids["w2"])
    assert impersonating.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert "not node" in impersonating.details()  # type: ignore[attr-defined]
    stale = refusal(ids["w1"])
    assert stale.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "session invalid" in stale.details()  # type: ignore[attr-defined]
    # Both agents' own sessions go on: neither node is marked down.
    time.sleep(3)
    assert c.node_state("w1") == c.node_state("w2") == 2  # READY
    assert other.running() and worker.running()


def _not_before(path: Path) -> dt.datetime:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_before_utc


@pytest.mark.docker
def test_certificates_renew_under_a_short_expiry_without_disturbing_tasks(cluster_factory: type) -> None:
    c: Cluster = cluster_factory()
    first = c.add_manager(extra=["--cert-expiry", "1m"])
    agent = c.add_agent()
    c.cli_ok("service", "create", "--name", "web", "--replicas", "2", "minisw/web:1")
    tasks = {t.id for t in c.running_tasks("web")}
    agent_cert = Path(agent.data_dir, "tls", "cert.pem")
    manager_cert = Path(first.data_dir, "tls", "cert.pem")
    agent_before, manager_before = _not_before(agent_cert), _not_before(manager_cert)
    poll_until(
        lambda: _not_before(agent_cert) > agent_before and _not_before(manager_cert) > manager_before,
        75,
        interval=1,
        what="both certificates renewed",
    )
    time.sleep(2)
    assert {t.id for t in c.running_tasks("web")} == tasks
    assert len(c.tasks("web")) == 2  # nothing restarted
    c.cli_ok("service", "scale", "web=3")  # and the cluster keeps working on the new certificates
    assert len(c.running_tasks("web")) == 3


def test_a_removed_node_cannot_reconnect(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    agent = c.add_agent("gone")
    agent.kill()
    poll_until(lambda: c.node_state("gone") == 1, 15, what="node down")
    c.cli_ok("node", "rm", "gone")
    agent.start()
    assert exited(agent) != 0
    assert "removed from swarm" in agent.log_tail()


class _LeavesAMark:
    """Unpickled, this object creates a file: the sign that a stranger's bytes ran as code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def _as_pysyncobj_frames(message: bytes) -> bytes:
    """``message`` framed as pysyncobj sends it without encryption: native 4-byte length, zlib."""
    body = zlib.compress(message, 3)
    return struct.pack("i", len(body)) + body


def _unpickle_as_pysyncobj_would(frame: bytes) -> object:
    """What pysyncobj does with a frame when no password is set (the control for the test below)."""
    (length,) = struct.unpack("i", frame[:4])
    return pickle.loads(zlib.decompress(frame[4 : 4 + length]))


def _close(unpickled: object) -> None:
    assert isinstance(unpickled, io.IOBase)  # the file the payload opened
    unpickled.close()


def _stable_state(manager: ManagerProc) -> tuple[str, int]:
    """(store digest, term) once no write has changed the store for a second. (The commit index
    moves with every read: each one commits an empty read-index entry.)"""
    last: list[tuple[str, int]] = []

    def settled() -> bool:
        info = manager.info()
        now = (info.store_digest, info.raft_term)
        settled = bool(last) and last[-1] == now
        last.append(now)
        return settled

    poll_until(settled, 15, interval=1.0, what="no more commits")
    return last[-1]


def test_raft_port_ignores_strangers(cluster_factory: type, tmp_path: Path) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    c.cli_ok("service", "create", "-d", "--name", "web", "minisw/web:1")
    manager = c.managers[0]
    mark = tmp_path / "unpickled-by-the-manager"
    evil = pickle.dumps(_LeavesAMark(mark))
    framed = _as_pysyncobj_frames(evil)
    # The control: these bytes leave the mark when they reach pickle.loads, framed or raw.
    _close(_unpickle_as_pysyncobj_would(framed))
    assert mark.exists()
    mark.unlink()
    _close(pickle.loads(evil))
    assert mark.exists()
    mark.unlink()

    before = _stable_state(manager)
    tasks_before = {t.id: t.meta.version.index for t in c.tasks("web")}
    host, _, port = manager.addr.rpartition(":")
    payloads = {
        "raw pickle": evil,
        "pysyncobj frame": framed,
        "frame without zlib": struct.pack("i", len(evil)) + evil,
        "two frames": framed + framed,
        "zeros": b"\x00" * 64,
        "http": b"GET / HTTP/1.0\r\n\r\n",
    }
    for what, payload in payloads.items():
        with socket.create_connection((host, int(port) + 1), timeout=3) as s:
            s.sendall(payload)
            s.settimeout(1)
            try:
                answer = s.recv(1024)
            except (TimeoutError, ConnectionError):
                answer = b""
        assert b"append" not in answer and b"services" not in answer, what
        assert not mark.exists(), f"the manager unpickled the {what}"
    time.sleep(1)
    assert not mark.exists()
    assert manager.running()
    info = manager.info()
    assert (info.store_digest, info.raft_term) == before
    assert {t.id: t.meta.version.index for t in c.tasks("web")} == tasks_before
    assert [r["Name"] for r in c.cli_json("service", "ls", "--format", "json")] == ["web"]
    c.cli_ok("service", "scale", "-d", "web=2")  # and Raft still commits
    assert manager.info().store_digest != before[0]

"""The real `docker` CLI (28.2.2) and docker-py against a minisw cluster's Engine API, over mutual
TLS with the operator's certificate directory as DOCKER_CERT_PATH; each output compared with what
`minisw` prints for the same cluster."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from minisw.manager.ca import RootCA
from minisw.proto.pki import MANAGER_OU, new_key_and_csr
from tests.support.cluster import Cluster, ManagerProc, poll_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.docker,
]


def engine_addr(manager: ManagerProc) -> str:
    host, _, port = manager.addr.rpartition(":")
    return f"{host}:{int(port) + 3}"  # the default: control port + 3


def docker(
    c: Cluster, *args: str, manager: ManagerProc | None = None, cert_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DOCKER_HOST": f"tcp://{engine_addr(manager or c.managers[0])}",
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(cert_path or c.tls_dir),
        "DOCKER_CONFIG": str(c.root / "docker-config"),  # no credentials or contexts of the machine's
    }
    env.pop("DOCKER_CONTEXT", None)
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, env=env)


def docker_ok(c: Cluster, *args: str, manager: ManagerProc | None = None) -> str:
    result = docker(c, *args, manager=manager)
    assert result.returncode == 0, f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr}"
    return result.stdout


_AGO = re.compile(r"(Less than a second|About a minute|\d+ (seconds|minutes?)) ago")


def same_table(a: str, b: str) -> None:
    """Tables printed a moment apart: the 'N seconds ago' may differ, and with it the padding."""

    def rows(text: str) -> list[list[str]]:
        return [re.split(r"\s{2,}", _AGO.sub("X ago", line).strip()) for line in text.splitlines()]

    assert rows(a) == rows(b), f"docker:\n{a}\nminisw:\n{b}"


def same_words(a: str, b: str) -> None:
    """docker writes `inspect --pretty` with tabs, minisw with the spaces they come to."""
    assert [line.split() for line in a.splitlines()] == [line.split() for line in b.splitlines()], (
        f"docker:\n{a}\nminisw:\n{b}"
    )


def _tasks_running(c: Cluster, service: str, n: int, image: str) -> bool:
    tasks = c.running_tasks(service)
    return len(tasks) == n and all(t.spec.container.image.startswith(image) for t in tasks)


def test_docker_cli_walkthrough_matches_minisw(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(3)
    c.add_agent("w1")
    c.add_agent("w2")
    follower = c.followers()[0]

    created = docker(c, "service", "create", "-p", "8080:80", "--name", "web", "minisw/web:1")
    assert created.returncode == 0, created.stderr
    service_id = created.stdout.split()[0]  # docker prints the ID, then waits on it
    assert created.stdout.rstrip().endswith(f"verify: Service {service_id} converged"), created.stdout
    assert "could not be accessed on a registry" in created.stderr  # docker's own warning: no digest pinning

    same_table(docker_ok(c, "service", "ls"), c.cli_ok("service", "ls"))
    same_table(docker_ok(c, "service", "ls", manager=follower), c.cli_ok("service", "ls"))  # a follower answers

    inspected = json.loads(docker_ok(c, "service", "inspect", "web"))[0]
    ours = c.cli_json("service", "inspect", "web")[0]
    for key in ("ID", "Version", "CreatedAt", "Endpoint"):
        assert inspected[key] == ours[key], key
    assert inspected["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == "minisw/web:1"
    assert inspected["Spec"]["Mode"] == {"Replicated": {"Replicas": 1}}
    pretty = docker_ok(c, "service", "inspect", "--pretty", "web")
    assert "\nResources:\nEndpoint Mode:" in pretty  # the bare heading of the (empty) Resources object
    same_words(pretty, c.cli_ok("service", "inspect", "--pretty", "web"))

    scaled = docker_ok(c, "service", "scale", "web=5")
    assert scaled.startswith("web scaled to 5") and "verify: Service web converged" in scaled, scaled
    assert len(c.running_tasks("web")) == 5

    updated = docker(c, "service", "update", "--image", "minisw/web:2", "--update-parallelism", "5", "web")
    assert updated.returncode == 0 and "verify: Service web converged" in updated.stdout, updated
    assert _tasks_running(c, "web", 5, "minisw/web:2")
    rolled = docker_ok(c, "service", "rollback", "web", manager=follower)
    assert "rollback: manually requested rollback" in rolled and "verify: Service web converged" in rolled, rolled
    assert _tasks_running(c, "web", 5, "minisw/web:1")

    ps = docker_ok(c, "service", "ps", "web")
    assert " \\_ web.1 " in ps, ps  # the history of slot 1 under its live task
    same_table(ps, c.cli_ok("service", "ps", "web"))

    same_table(docker_ok(c, "node", "ls"), c.cli_ok("node", "ls"))
    assert docker_ok(c, "node", "update", "--availability", "drain", "w1").strip() == "w1"
    assert c.cli_json("node", "inspect", "w1")[0]["Spec"]["Availability"] == "drain"
    poll_until(lambda: all(t.node_id != _node_id(c, "w1") for t in c.running_tasks("web")), 30, what="w1 drained")
    same_table(docker_ok(c, "node", "ls"), c.cli_ok("node", "ls"))

    # minisw prints its own join command (`minisw agent --join ...`); docker prints docker's, with
    # the same token and the address of the manager it asked.
    token = c.cli_ok("join-token", "-q", "worker").strip()
    assert docker_ok(c, "swarm", "join-token", "worker") == (
        "To add a worker to this swarm, run the following command:\n\n"
        f"    docker swarm join --token {token} {c.managers[0].addr}\n\n"
    )
    assert docker_ok(c, "swarm", "join-token", "-q", "manager").strip() == c.cluster().join_tokens.manager

    assert docker_ok(c, "service", "rm", "web").strip() == "web"
    assert c.cli_ok("service", "ls", "-q") == ""
    gone = docker(c, "service", "inspect", "web")
    assert gone.returncode == 1 and gone.stderr.strip() == "Error: no such service: web"


def _node_id(c: Cluster, hostname: str) -> str:
    return next(n.id for n in c.nodes() if n.description.hostname == hostname)


def test_docker_py_services_and_nodes(cluster_factory: type, monkeypatch: pytest.MonkeyPatch) -> None:
    import docker as docker_sdk
    from docker.types import EndpointSpec

    # requests prefers these over the session's CA (psf/requests#3829): the cluster's CA must win.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)

    c: Cluster = cluster_factory().start_managers(1)
    c.add_agent("w1")
    tls = docker_sdk.tls.TLSConfig(
        client_cert=(str(c.tls_dir / "cert.pem"), str(c.tls_dir / "key.pem")),
        ca_cert=str(c.tls_dir / "ca.pem"),
        verify=True,
    )
    client = docker_sdk.DockerClient(base_url=f"https://{engine_addr(c.managers[0])}", tls=tls)
    try:
        service = client.services.create("minisw/web:1", name="sdk", endpoint_spec=EndpointSpec(ports={8081: 80}))
        assert [s.name for s in client.services.list()] == ["sdk"]
        assert [s.name for s in client.services.list(filters={"name": "sd"})] == ["sdk"]
        poll_until(lambda: len(c.running_tasks("sdk")) == 1, 60, what="sdk running")

        client.services.get("sdk").scale(3)
        poll_until(lambda: len(c.running_tasks("sdk")) == 3, 60, what="sdk scaled to 3")
        assert c.cli_json("service", "inspect", "sdk")[0]["Spec"]["Mode"] == {"Replicated": {"Replicas": 3}}

        client.services.get("sdk").update(image="minisw/web:2")
        poll_until(lambda: _tasks_running(c, "sdk", 3, "minisw/web:2"), 90, what="sdk updated")
        tasks = client.services.get("sdk").tasks()
        assert {t["ID"] for t in tasks} == {t.id for t in c.tasks("sdk")}
        assert {t["Spec"]["ContainerSpec"]["Image"] for t in tasks if t["DesiredState"] == "running"} == {
            "minisw/web:2"
        }

        nodes = client.nodes.list()
        assert {n.attrs["Description"]["Hostname"] for n in nodes} == {"manager1", "w1"}
        assert [n.attrs["Description"]["Hostname"] for n in client.nodes.list(filters={"role": "manager"})] == [
            "manager1"
        ]

        service.reload()
        service.remove()
        assert client.services.list() == []
        with pytest.raises(docker_sdk.errors.NotFound, match="service sdk not found"):
            client.services.get("sdk")
    finally:
        client.close()


def _https(c: Cluster, method: str, path: str, body: bytes | None = None) -> tuple[int, Any, str]:
    context = ssl.create_default_context(cafile=str(c.tls_dir / "ca.pem"))
    context.load_cert_chain(c.tls_dir / "cert.pem", c.tls_dir / "key.pem")
    request = urllib.request.Request(
        f"https://{engine_addr(c.managers[0])}/v1.50{path}",
        data=body,
        method=method,
        headers={"Content-Type": "application/json"} if body is not None else {},
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null"), response.headers["Content-Type"]
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers["Content-Type"]


def test_bad_input_gets_dockers_errors_and_changes_nothing(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    c.cli_ok("service", "create", "-d", "--name", "web", "minisw/web:1")
    before = c.cli_json("service", "inspect", "web")[0]
    spec = json.dumps(before["Spec"]).encode()
    version = before["Version"]["Index"]

    status, body, content_type = _https(c, "POST", "/services/create", b'{"Name": "x",')
    assert (status, content_type) == (400, "application/json")
    assert body["message"].startswith("invalid JSON: ")

    bogus = json.dumps({**before["Spec"], "Name": "other", "Replicaz": 3}).encode()
    status, body, _ = _https(c, "POST", "/services/create", bogus)
    assert (status, body["message"]) == (400, 'invalid JSON: json: unknown field "Replicaz" in ServiceSpec')

    status, body, _ = _https(c, "POST", "/services/create", spec)
    assert status == 409
    assert body["message"] == (
        "rpc error: code = AlreadyExists desc = name conflicts with an existing object: service web already exists"
    )
    taken = docker(c, "service", "create", "-d", "--no-resolve-image", "--name", "web", "minisw/web:2")
    assert taken.returncode == 1
    assert taken.stderr.strip() == (
        "Error response from daemon: rpc error: code = AlreadyExists desc = "
        "name conflicts with an existing object: service web already exists"
    )

    status, body, _ = _https(c, "POST", f"/services/web/update?version={version + 100}", spec)
    assert (status, body["message"]) == (500, "rpc error: code = Unknown desc = update out of sequence")
    status, body, _ = _https(c, "POST", "/services/web/update?version=abc", spec)
    assert status == 400 and body["message"].startswith("invalid service version 'abc'")
    status, body, _ = _https(c, "GET", "/services/nosuch")
    assert (status, body["message"]) == (404, "service nosuch not found")
    status, body, _ = _https(c, "GET", "/no/such/route")
    assert (status, body["message"]) == (404, "page not found")
    missing = docker(c, "service", "rm", "nosuch")
    assert missing.returncode == 1 and missing.stderr.strip() == "Error response from daemon: service nosuch not found"

    after = c.cli_json("service", "inspect", "web")[0]
    assert after["Version"] == before["Version"] and after["Spec"] == before["Spec"]
    assert len(c.cli_ok("service", "ls", "-q").split()) == 1  # no "other", no second "web"


def test_wrong_missing_or_worker_certificates_are_refused(cluster_factory: type, tmp_path: Path) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    worker = c.add_agent("w1")

    # A certificate of another CA (even one that claims the manager role): no handshake.
    stranger = RootCA.create()
    key, csr = new_key_and_csr()
    from datetime import timedelta

    other = tmp_path / "other"
    other.mkdir()
    (other / "ca.pem").write_bytes((c.tls_dir / "ca.pem").read_bytes())  # trusts the server, is not trusted
    (other / "cert.pem").write_bytes(stranger.sign(csr, "intruder", MANAGER_OU, "x", timedelta(days=1)))
    (other / "key.pem").write_bytes(key)
    refused = docker(c, "service", "ls", cert_path=other)
    # The handshake fails (the server refuses the certificate): docker never gets an HTTP answer.
    assert refused.returncode == 1 and refused.stdout == "", refused
    assert refused.stderr.startswith("error during connect:"), refused.stderr

    # No certificate at all: plain HTTPS without one is refused at the handshake too.
    context = ssl.create_default_context(cafile=str(c.tls_dir / "ca.pem"))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"https://{engine_addr(c.managers[0])}/v1.50/services", context=context, timeout=10)

    # Plaintext against the TLS port: refused, nothing served.
    plain = subprocess.run(
        ["docker", "-H", f"tcp://{engine_addr(c.managers[0])}", "service", "ls"],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")},
    )
    assert plain.returncode == 1

    # A worker's certificate (the cluster's CA, role worker): Swarm's refusal.
    refusal = docker(c, "service", "ls", cert_path=worker.data_dir / "tls")
    assert refusal.returncode == 1
    assert refusal.stderr.strip() == (
        "Error response from daemon: This node is not a swarm manager. Worker nodes can't be used to view or "
        "modify cluster state. Please run this command on a manager node or promote the current node to a manager."
    )


def test_unix_socket_and_loopback_plaintext_when_asked(cluster_factory: type) -> None:
    c: Cluster = cluster_factory()
    sock = c.root / "engine.sock"
    m = c.add_manager(extra=["--engine-api", f"unix://{sock}"])
    poll_until(sock.exists, 30, what="the Engine API socket")
    assert oct(sock.stat().st_mode & 0o777) == "0o600"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    out = subprocess.run(
        ["docker", "-H", f"unix://{sock}", "node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert out.returncode == 0 and out.stdout.strip() == "manager1 Leader", out
    assert m.running()

    refused = subprocess.run(
        [*_manager_cmd(c), "--engine-api", "10.1.2.3:2375", "--engine-api-plaintext"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert "plaintext Engine API on 10.1.2.3 refused" in refused.stderr


def _manager_cmd(c: Cluster) -> list[str]:
    import sys

    data = c.root / "refused"
    return [sys.executable, "-m", "minisw.cli", "manager", "--data-dir", str(data), "--listen", "127.0.0.1:1", "--init"]


def _rows(table_text: str) -> dict[str, list[str]]:
    """A docker table by its second column (the name), header left out."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in table_text.splitlines()[1:]]
    return {row[1]: row for row in rows}


def _update_service(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """``docker service update -d``, again when the service moved on between the CLI's read and
    its write: the rolling update writes its status into the service (as swarmkit's does), and
    docker then says "update out of sequence", as it would against Swarm."""
    for _ in range(20):
        result = docker(c, "service", "update", "-d", *args)
        if "update out of sequence" not in result.stderr:
            return result
        time.sleep(0.2)
    return result


def test_docker_cli_networks_and_services_on_them(cluster_factory: type) -> None:
    # One manager and one worker on the loopback cluster: tasks on an overlay network are
    # rejected there (kernel networking needs separate hosts), so this checks the control plane.
    c: Cluster = cluster_factory().start_managers(1)
    c.add_agent("w1")

    network_id = docker_ok(c, "network", "create", "-d", "overlay", "--label", "team=a", "n1").strip()
    ours = c.cli_json("network", "inspect", "n1")[0]
    assert network_id == ours["Id"]

    listed = docker_ok(c, "network", "ls")
    assert _rows(listed)["n1"] == [network_id[:12], "n1", "overlay", "swarm"], listed
    assert _rows(listed)["ingress"][2:] == ["overlay", "swarm"], listed
    same_table(listed, c.cli_ok("network", "ls"))
    assert docker_ok(c, "network", "ls", "-f", "label=team=a", "--format", "{{.Name}} {{.Scope}}") == "n1 swarm\n"
    assert docker_ok(c, "network", "ls", "-q", "-f", "name=^n1$", "-f", "driver=overlay").split() == [network_id[:12]]
    assert docker_ok(c, "network", "ls", "-q", "-f", "scope=local") == ""

    inspected = json.loads(docker_ok(c, "network", "inspect", "n1"))
    assert inspected == [{k: v for k, v in ours.items() if k != "Services"}]
    assert inspected[0]["Scope"] == "swarm" and inspected[0]["Labels"] == {"team": "a"}
    assert inspected[0]["IPAM"]["Config"][0]["Subnet"] == ours["IPAM"]["Config"][0]["Subnet"]
    assert json.loads(docker_ok(c, "network", "inspect", network_id[:6])) == inspected  # by ID prefix

    bridge = docker(c, "network", "create", "b1")  # the CLI's default driver is bridge
    assert bridge.returncode == 1
    assert bridge.stderr.strip() == (
        'Error response from daemon: network driver "bridge" is not supported: minisw networks are swarm '
        "overlay networks (docker network create -d overlay NAME)"
    )
    twice = docker(c, "network", "create", "-d", "overlay", "n1")
    assert twice.returncode == 1
    assert twice.stderr.strip() == "Error response from daemon: network with name n1 already exists"

    created = docker(
        c, "service", "create", "-d", "--no-resolve-image", "--network", "n1", "--name", "web", "minisw/web:1"
    )
    assert created.returncode == 0, created.stderr
    service = json.loads(docker_ok(c, "service", "inspect", "web"))[0]
    assert service["Spec"]["TaskTemplate"]["Networks"] == [{"Target": network_id}]
    vips = service["Endpoint"]["VirtualIPs"]
    assert [v["NetworkID"] for v in vips] == [network_id], service["Endpoint"]
    assert service["Endpoint"] == c.cli_json("service", "inspect", "web")[0]["Endpoint"]
    pretty = docker_ok(c, "service", "inspect", "--pretty", "web")  # looks the network's name up
    assert re.search(r"^Networks:\s+n1\s*$", pretty, re.M), pretty

    # docker sends the whole spec back: the network and its VIP must survive an image update.
    updated = _update_service(c, "--no-resolve-image", "--image", "minisw/web:2", "web")
    assert updated.returncode == 0, updated.stderr
    after = json.loads(docker_ok(c, "service", "inspect", "web"))[0]
    assert after["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == "minisw/web:2"
    assert after["Spec"]["TaskTemplate"]["Networks"] == [{"Target": network_id}]
    assert after["Endpoint"]["VirtualIPs"] == vips

    # --network-add/--network-rm change TaskTemplate.Networks, which the update must take.
    second_id = docker_ok(c, "network", "create", "-d", "overlay", "n2").strip()
    assert _update_service(c, "--network-add", "n2", "web").returncode == 0
    both = json.loads(docker_ok(c, "service", "inspect", "web"))[0]
    assert sorted(n["Target"] for n in both["Spec"]["TaskTemplate"]["Networks"]) == sorted([network_id, second_id])
    assert sorted(v["NetworkID"] for v in both["Endpoint"]["VirtualIPs"]) == sorted([network_id, second_id])
    assert _update_service(c, "--network-rm", "n2", "web").returncode == 0
    assert json.loads(docker_ok(c, "service", "inspect", "web"))[0]["Endpoint"]["VirtualIPs"] == vips
    assert docker_ok(c, "network", "rm", "n2").strip() == "n2"

    poll_until(lambda: c.tasks("web"), 30, what="a task of web")
    ps = docker(c, "service", "ps", "--no-trunc", "web")  # GET /tasks with the networks beside
    assert ps.returncode == 0 and "web.1" in ps.stdout, ps
    verbose = json.loads(docker_ok(c, "network", "inspect", "--verbose", "n1"))[0]
    assert verbose["Services"]["web"]["VIP"] == vips[0]["Addr"].split("/")[0], verbose["Services"]

    in_use = docker(c, "network", "rm", "n1")
    assert in_use.returncode == 1
    assert in_use.stderr.startswith(
        "Error response from daemon: rpc error: code = FailedPrecondition desc = network n1 is in use by service web"
    ), in_use.stderr
    assert "n1" in _rows(docker_ok(c, "network", "ls"))

    assert docker_ok(c, "service", "rm", "web").strip() == "web"
    assert docker_ok(c, "network", "rm", "n1").strip() == "n1"
    assert "n1" not in _rows(docker_ok(c, "network", "ls"))
    gone = docker(c, "network", "inspect", "n1")
    assert gone.returncode == 1 and gone.stderr.strip() == "Error response from daemon: network n1 not found"
    missing = docker(c, "network", "rm", "n1")
    # docker's `network rm` adds its own last line, "exit status 1".
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[0] == "Error response from daemon: network n1 not found", missing.stderr
    assert docker(c, "network", "rm", "-f", "n1").returncode == 0


def _serving(c: Cluster) -> bool:
    """The Engine API starts a moment after the manager has a leader."""
    try:
        return _https(c, "GET", "/networks")[0] == 200
    except OSError:  # connection refused: not listening yet
        return False


def test_network_requests_docker_cannot_express_here_are_refused(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    poll_until(lambda: _serving(c), 30, what="the Engine API")

    def create(body: dict[str, Any]) -> tuple[int, Any]:
        status, reply, _ = _https(c, "POST", "/networks/create", json.dumps({"Name": "x", **body}).encode())
        return status, reply

    assert create({"Driver": "overlay", "IPAM": {"Config": [{"Subnet": "10.77.0.0/16", "Gateway": "10.77.0.9"}]}}) == (
        400,
        {"message": "CreateRequest.IPAM.Config.Gateway is not supported by minisw"},
    )
    assert create({"Driver": "overlay", "Options": {"encrypted": ""}}) == (
        400,
        {"message": "CreateRequest.Options is not supported by minisw"},
    )
    assert create({"Driver": "overlay", "Scope": "local"})[0] == 400
    status, reply = create({"Driver": "overlay", "Ingress": True})
    assert status == 400 and "ingress network already" in reply["message"], reply
    assert c.cli_ok("network", "ls", "-q", "-f", "name=^x$") == ""

    # docker-py's body (CheckDuplicate, nulls) and a subnet of our choosing.
    status, reply = create(
        {
            "Driver": "overlay",
            "CheckDuplicate": True,
            "Labels": None,
            "Options": None,
            "IPAM": {"Driver": "default", "Config": [{"Subnet": "10.77.0.0/16"}], "Options": {}},
        }
    )
    assert status == 201 and reply["Warning"] == "", reply
    status, listed, _ = _https(c, "GET", "/networks?filters=" + urllib.parse.quote('{"name":["^x$"]}'))
    assert status == 200 and [n["Id"] for n in listed] == [reply["Id"]]
    assert listed[0]["IPAM"]["Config"] == [{"Subnet": "10.77.0.0/16", "Gateway": "10.77.0.1"}]

    ingress = c.cli_json("network", "inspect", "ingress")[0]["Id"]
    status, body, _ = _https(c, "DELETE", f"/networks/{ingress}")
    assert status == 403 and "the ingress network cannot be removed" in body["message"], body
    status, body, _ = _https(c, "GET", "/networks?filters=" + urllib.parse.quote('{"dangling":["true"]}'))
    assert (status, body) == (400, {"message": "invalid filter 'dangling'"})
    status, body, _ = _https(c, "DELETE", f"/networks/{reply['Id']}")
    assert status == 204 and body is None

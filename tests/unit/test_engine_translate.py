"""The Engine API's JSON in and out: what the docker CLI reads back, it must be able to send back."""

from __future__ import annotations

import json

import pytest

from minisw.manager.engineapi.translate import BadRequest, node_spec, service_spec
from minisw.proto import objects_pb2 as pb
from minisw.proto.defaults import interpolate_service_spec
from minisw.proto.engine import service_json
from minisw.proto.timeutil import duration


def _full_spec() -> pb.ServiceSpec:
    spec = pb.ServiceSpec()
    spec.annotations.name = "web"
    spec.annotations.labels["tier"] = "front"
    c = spec.task.container
    c.image = "minisw/web:1"
    c.args.extend(["--port", "80"])
    c.env.append("A=1")
    c.init = False
    c.stop_grace_period.CopyFrom(duration(3))
    c.healthcheck.test.extend(["CMD", "true"])
    c.healthcheck.interval.CopyFrom(duration(1))
    c.dns_config.SetInParent()
    c.mounts.add(type=pb.Mount.TMPFS, target="/tmp/x").tmpfs_options.size_bytes = 1024
    c.pids_limit = 50
    spec.task.resources.limits.memory_bytes = 64 << 20
    spec.task.restart.condition = pb.RestartPolicy.ON_FAILURE
    spec.task.restart.delay.CopyFrom(duration(2))
    spec.task.placement.constraints.append("node.role==worker")
    spec.replicated.replicas = 3
    spec.update.parallelism = 2
    spec.update.monitor.CopyFrom(duration(1))
    spec.update.max_failure_ratio = 0.25
    spec.endpoint.ports.add(target_port=80, published_port=8080)
    return spec


@pytest.mark.parametrize("make", [_full_spec, lambda: interpolate_service_spec(_full_spec())])
def test_a_spec_read_back_is_the_same_spec(make: object) -> None:
    spec = make()  # type: ignore[operator]
    rendered = json.loads(json.dumps(service_json(pb.Service(id="x", spec=spec))["Spec"]))
    assert service_spec(rendered) == spec


def test_docker_py_lower_case_mode_and_nulls() -> None:
    body = {
        "Name": "sdk",
        "TaskTemplate": {"ContainerSpec": {"Image": "minisw/web:1", "Command": None, "Args": None}},
        "Mode": {"replicated": {"Replicas": 4}},
        "EndpointSpec": {"Ports": [{"Protocol": "tcp", "PublishedPort": 8080, "TargetPort": 80}]},
    }
    spec = service_spec(body)
    assert spec.replicated.replicas == 4
    assert spec.endpoint.ports[0].published_port == 8080


def test_replicas_default_to_one_as_docker() -> None:
    assert service_spec({"Name": "a", "Mode": {"Replicated": {}}}).replicated.replicas == 1
    assert service_spec({"Name": "a"}).replicated.replicas == 1
    assert service_spec({"Name": "a", "Mode": {"Global": {}}}).HasField("global")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"Name": "a", "Bogus": 1}, 'unknown field "Bogus"'),
        ({"Name": "a", "TaskTemplate": {"ContainerSpec": {"Image": 5}}}, "cannot unmarshal number"),
        ({"Name": "a", "TaskTemplate": {"ContainerSpec": {"Secrets": [{"SecretName": "s"}]}}}, "not supported"),
        ({"Name": "a", "TaskTemplate": {"RestartPolicy": {"Condition": "sometimes"}}}, "expected one of"),
        ({"Name": "a", "Mode": {"ReplicatedJob": {}}}, "not supported"),
        ([], "cannot unmarshal array"),
    ],
)
def test_bad_specs_say_what_is_wrong(body: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        service_spec(body)


def test_node_spec_keeps_membership() -> None:
    current = pb.NodeSpec(membership=pb.NodeSpec.ACCEPTED, desired_role=pb.MANAGER)
    spec = node_spec({"Labels": {}, "Role": "manager", "Availability": "drain"}, current)
    assert spec.membership == pb.NodeSpec.ACCEPTED
    assert spec.availability == pb.NodeSpec.DRAIN
    assert spec.desired_role == pb.MANAGER


def test_minisw_only_fields_survive_a_docker_update() -> None:
    from minisw.manager.engineapi.services import _DOCKER_FIELDS, _keep_minisw_fields

    current = _full_spec()
    current.rebalance = 3
    current.auto_rebalance = True
    sent = service_spec(json.loads(json.dumps(service_json(pb.Service(spec=current))["Spec"])))
    sent.replicated.replicas = 5
    _keep_minisw_fields(sent, current, _DOCKER_FIELDS["ServiceSpec"])
    _keep_minisw_fields(sent.task, current.task, _DOCKER_FIELDS["TaskSpec"])
    assert (sent.rebalance, sent.auto_rebalance, sent.replicated.replicas) == (3, True, 5)

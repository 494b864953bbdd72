"""Spec validation: Swarm's rules and texts."""

from __future__ import annotations

import pytest

from minisw.manager.controlapi.validate import validate_service_spec
from minisw.manager.errors import InvalidArgument
from minisw.proto import objects_pb2 as pb


def spec(name: str = "web", image: str = "minisw/web:1") -> pb.ServiceSpec:
    s = pb.ServiceSpec(annotations=pb.Annotations(name=name))
    s.task.container.image = image
    s.replicated.replicas = 1
    return s


def test_a_good_spec_passes() -> None:
    validate_service_spec(spec())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.annotations.ClearField("name"), "name must be provided"),
        (lambda s: setattr(s.annotations, "name", "-web"), "DNS name component"),
        (lambda s: setattr(s.annotations, "name", "a" * 64), "63 characters"),
        (lambda s: s.task.container.ClearField("image"), "image reference must be provided"),
        (lambda s: setattr(s.task.container, "image", "Bad Image"), "not a valid repository/tag"),
        (lambda s: setattr(s.task.resources.limits, "memory_bytes", 1024), "at least 4MiB"),
        (lambda s: setattr(s.task.resources.reservations, "nano_cpus", 10), "at least 0.001"),
        (lambda s: s.task.placement.constraints.append("node.role=manager"), "invalid constraint"),
        (lambda s: s.task.placement.constraints.append("node.color==red"), "unknown key"),
        (lambda s: setattr(s.update, "max_failure_ratio", 1.5), "maxfailureratio"),
        (lambda s: s.endpoint.ports.append(pb.PortConfig(target_port=0)), "invalid target port"),
        (
            lambda s: s.endpoint.ports.extend([pb.PortConfig(target_port=80, published_port=8080)] * 2),
            "duplicate published ports",
        ),
    ],
)
def test_bad_specs_are_refused_with_swarm_texts(mutate: object, message: str) -> None:
    s = spec()
    mutate(s)  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match=message):
        validate_service_spec(s)


def test_dnsrr_with_ingress_port_is_refused() -> None:
    s = spec()
    s.endpoint.mode = pb.EndpointSpec.DNSRR
    s.endpoint.ports.append(pb.PortConfig(target_port=80, published_port=80))
    with pytest.raises(InvalidArgument, match="can't be used with dnsrr mode"):
        validate_service_spec(s)

"""`service inspect --pretty` prints docker's bare `Resources:` heading: the Engine API JSON always
carries TaskTemplate.Resources, and docker's template prints the heading whenever it is there."""

from __future__ import annotations

from minisw.cli.inspect_pretty import pretty_service
from minisw.proto import objects_pb2 as pb
from minisw.proto.engine import service_json


def _service(**resources: pb.Resources) -> pb.Service:
    service = pb.Service(id="s")
    service.spec.annotations.name = "web"
    service.spec.replicated.replicas = 1
    service.spec.task.container.image = "minisw/web:1"
    for name, value in resources.items():
        getattr(service.spec.task.resources, name).CopyFrom(value)
    return service


def test_empty_resources_print_the_bare_heading() -> None:
    service = _service()
    assert "Resources" in service_json(service)["Spec"]["TaskTemplate"]  # what docker reads
    assert "\nResources:\nEndpoint Mode:" in pretty_service(service)


def test_resources_with_values() -> None:
    out = pretty_service(_service(limits=pb.Resources(nano_cpus=500_000_000, memory_bytes=64 * 1024 * 1024)))
    assert "\nResources:\n Limits:\n  CPU:\t\t0.5\n  Memory:\t64MiB\nEndpoint Mode:".expandtabs(8) in out
    out = pretty_service(_service(reservations=pb.Resources(nano_cpus=2_000_000_000)))
    assert "\nResources:\n Reservations:\n  CPU:\t\t2\nEndpoint Mode:".expandtabs(8) in out
    assert out.count("Resources:") == 1

"""``/services`` and ``/tasks``: the Engine API's service and task endpoints on the control API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from minisw.manager import ids
from minisw.manager.engineapi.calls import ENGINE
from minisw.manager.engineapi.translate import service_spec
from minisw.manager.engineapi.wire import (
    ApiError,
    Handler,
    bool_param,
    empty_response,
    filters,
    json_body,
    json_response,
    version_param,
)
from minisw.proto import control_pb2 as api
from minisw.proto import objects_pb2 as pb
from minisw.proto.engine import service_json, task_json
from minisw.proto.model import task_name

__all__ = ["add_service_routes"]

SERVICE_FILTERS = ("id", "name", "label", "mode", "runtime")
TASK_FILTERS = ("id", "name", "label", "service", "node", "desired-state", "_up-to-date", "runtime")

# The Engine API's ServiceSpec covers these fields; any other one is minisw's own (e.g. the
# rebalance counter) and survives a docker update, which cannot express it, unchanged.
_DOCKER_FIELDS = {
    "ServiceSpec": {"annotations", "task", "replicated", "global", "update", "rollback", "endpoint"},
    "TaskSpec": {"container", "resources", "restart", "placement", "force_update", "log_driver", "networks"},
}


def _keep_minisw_fields(new: Any, current: Any, docker_fields: set[str]) -> None:
    for field in new.DESCRIPTOR.fields:
        if field.name in docker_fields:
            continue
        if field.is_repeated:
            target = getattr(new, field.name)
            del target[:]
            target.extend(getattr(current, field.name))
        elif field.message_type is not None:
            if current.HasField(field.name):
                getattr(new, field.name).CopyFrom(getattr(current, field.name))
        else:
            setattr(new, field.name, getattr(current, field.name))


def _labels(values: list[str]) -> dict[str, str]:
    return {key: value for key, _, value in (v.partition("=") for v in values)}


def _mode(service: pb.Service) -> str:
    return "global" if service.spec.HasField("global") else "replicated"


async def list_services(request: web.Request) -> web.Response:
    call = request.app[ENGINE]
    f = filters(request, SERVICE_FILTERS)
    reply = await call(
        request,
        "ListServices",
        api.ListServicesRequest(
            id_prefixes=f.get("id", []), name_prefixes=f.get("name", []), labels=_labels(f.get("label", []))
        ),
    )
    with_status = bool_param(request, "status")
    out = []
    for service, status in zip(reply.services, reply.statuses, strict=True):
        if "mode" in f and _mode(service) not in f["mode"]:
            continue
        item = service_json(service)
        if with_status:
            item["ServiceStatus"] = {
                "RunningTasks": status.running_tasks,
                "DesiredTasks": status.desired_tasks,
                "CompletedTasks": status.completed_tasks,
            }
        out.append(item)
    return json_response(out)


async def create_service(request: web.Request) -> web.Response:
    spec = service_spec(await json_body(request))
    if not spec.annotations.name:
        spec.annotations.name = f"service-{ids.new_id()[:10]}"  # Docker names it at random too
    reply = await request.app[ENGINE](request, "CreateService", api.CreateServiceRequest(spec=spec))
    return json_response({"ID": reply.service.id, "Warnings": None}, 201)


async def get_service(request: web.Request) -> web.Response:
    reply = await request.app[ENGINE](
        request,
        "GetService",
        api.GetServiceRequest(
            service_id=request.match_info["ref"], insert_defaults=bool_param(request, "insertDefaults")
        ),
    )
    return json_response(service_json(reply.service))


async def update_service(request: web.Request) -> web.Response:
    call = request.app[ENGINE]
    ref = request.match_info["ref"]
    version = version_param(request, "service")
    registry_auth_from = request.query.get("registryAuthFrom", "spec")
    if registry_auth_from not in ("", "spec", "previous-spec"):
        raise ApiError(400, f"invalid registryAuthFrom value: {registry_auth_from}")
    body = await json_body(request)
    rollback = request.query.get("rollback", "") == "previous"
    update = api.UpdateServiceRequest(service_id=ref, service_version=pb.Version(index=version), rollback=rollback)
    if not rollback:  # a rollback restores the previous spec; the CLI sends the current one along
        spec = service_spec(body)
        current = (await call(request, "GetService", api.GetServiceRequest(service_id=ref))).service
        _keep_minisw_fields(spec, current.spec, _DOCKER_FIELDS["ServiceSpec"])
        _keep_minisw_fields(spec.task, current.spec.task, _DOCKER_FIELDS["TaskSpec"])
        update.spec.CopyFrom(spec)
    await call(request, "UpdateService", update)
    return json_response({"Warnings": None})


async def remove_service(request: web.Request) -> web.Response:
    await request.app[ENGINE](request, "RemoveService", api.RemoveServiceRequest(service_id=request.match_info["ref"]))
    return empty_response()


def _desired_states(values: list[str]) -> list[int]:
    states: list[int] = []
    for value in values:
        name = value.upper()
        if name not in pb.TaskState.keys():
            raise ApiError(400, f"invalid filter 'desired-state={value}'")
        states.append(int(pb.TaskState.Value(name)))
    return states


async def list_tasks(request: web.Request) -> web.Response:
    call = request.app[ENGINE]
    f = filters(request, TASK_FILTERS)
    up_to_date = f.get("_up-to-date", [])
    reply = await call(
        request,
        "ListTasks",
        api.ListTasksRequest(
            service_ids=f.get("service", []),
            node_ids=f.get("node", []),
            desired_states=_desired_states(f.get("desired-state", [])),  # type: ignore[arg-type]
            up_to_date=bool(up_to_date) and up_to_date != ["false"],
            id_prefixes=f.get("id", []),
        ),
    )
    tasks = list(reply.tasks)
    if "label" in f:
        tasks = []  # tasks carry no labels of their own
    if "name" in f:
        services = (await call(request, "ListServices", api.ListServicesRequest())).services
        names = {s.id: s.spec.annotations.name for s in services}
        tasks = [t for t in tasks if any(task_name(names.get(t.service_id, ""), t).startswith(n) for n in f["name"])]
    networks = await _networks_of(request, tasks)
    return json_response([task_json(t, networks) for t in tasks])


async def _networks_of(request: web.Request, tasks: list[pb.Task]) -> dict[str, pb.Network]:
    """The networks (by ID) that ``NetworksAttachments`` describes; asked for only when a task
    has an address on one (the CLI's wait loop polls ``/tasks`` several times a second)."""
    if not any(t.status.networks for t in tasks):
        return {}
    reply = await request.app[ENGINE](request, "ListNetworks", api.ListNetworksRequest())
    return {n.id: n for n in reply.networks}


async def get_task(request: web.Request) -> web.Response:
    reply = await request.app[ENGINE](request, "GetTask", api.GetTaskRequest(task_id=request.match_info["ref"]))
    return json_response(task_json(reply.task, await _networks_of(request, [reply.task])))


def add_service_routes(add: Callable[[str, str, Handler], None]) -> None:
    add("GET", "/services", list_services)
    add("POST", "/services/create", create_service)
    add("GET", "/services/{ref}", get_service)
    add("POST", "/services/{ref}/update", update_service)
    add("DELETE", "/services/{ref}", remove_service)
    add("GET", "/tasks", list_tasks)
    add("GET", "/tasks/{ref}", get_task)

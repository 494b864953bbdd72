"""``/networks``: the Engine API's network endpoints on the control API (swarm networks only).

dockerd answers these from two places, its local networks and the swarm's; a minisw manager
has only the swarm's, so every network here is an overlay network with scope ``swarm``. The
texts of the errors the docker CLI prints are dockerd's (``network n1 not found``, ``network
with name n1 already exists``); the refusals that only the manager can judge keep its words.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import grpc
from aiohttp import web

from minisw.manager.engineapi.calls import ENGINE, CallFailed
from minisw.manager.engineapi.translate import network_spec
from minisw.manager.engineapi.wire import (
    ApiError,
    Handler,
    bool_param,
    filters,
    http_error,
    json_body,
    json_response,
)
from minisw.proto import control_pb2 as api
from minisw.proto import objects_pb2 as pb
from minisw.proto.engine import network_json, network_services_json

__all__ = ["add_network_routes", "network_matches"]

NETWORK_FILTERS = ("driver", "id", "label", "name", "scope", "type")
_SCOPES = ("", "swarm", "global", "local")


def _search(pattern: str, text: str) -> bool:
    """moby's ``filters.Args.Match``: the exact value, or a regular expression found in it."""
    if pattern == text:
        return True
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return False


def _has_label(labels: dict[str, str], wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or labels[key] == value)


def network_matches(n: pb.Network, wanted: dict[str, list[str]]) -> bool:
    """dockerd's network filters: values of one key are alternatives, keys combine; ``name`` and
    ``id`` are regular expressions, ``driver`` and ``scope`` exact, ``label`` a key or key=value,
    ``type`` custom (every swarm network) or builtin (none)."""
    for value in wanted.get("type", []):
        if value not in ("custom", "builtin"):
            raise ApiError(400, f"invalid filter: 'type'='{value}'")
    checks: dict[str, Callable[[str], bool]] = {
        "name": lambda v: _search(v, n.spec.annotations.name),
        "id": lambda v: _search(v, n.id),
        "driver": lambda v: v == (n.spec.driver or "overlay"),
        "scope": lambda v: v == "swarm",
        "label": lambda v: _has_label(dict(n.spec.annotations.labels), v),
        "type": lambda v: v == "custom",
    }
    return all(any(checks[key](v) for v in values) for key, values in wanted.items())


def _not_found(ref: str) -> ApiError:
    return ApiError(404, f"network {ref} not found")


async def list_networks(request: web.Request) -> web.Response:
    wanted = filters(request, NETWORK_FILTERS)
    reply = await request.app[ENGINE](request, "ListNetworks", api.ListNetworksRequest())
    return json_response([network_json(n) for n in reply.networks if network_matches(n, wanted)])


async def _get_network(request: web.Request, ref: str) -> pb.Network:
    try:
        reply = await request.app[ENGINE](request, "GetNetwork", api.GetNetworkRequest(network_id=ref))
    except CallFailed as err:
        if err.code == grpc.StatusCode.NOT_FOUND:
            raise _not_found(ref) from None
        raise
    network: pb.Network = reply.network
    return network


async def inspect_network(request: web.Request) -> web.Response:
    ref = request.match_info["ref"]
    scope = request.query.get("scope", "")
    if scope not in _SCOPES:
        raise ApiError(400, f"invalid scope value: {scope}")
    if scope == "local":  # a manager's swarm networks are not local ones
        raise _not_found(ref)
    network = await _get_network(request, ref)
    if not bool_param(request, "verbose"):
        return json_response(network_json(network))
    call = request.app[ENGINE]
    services = (await call(request, "ListServices", api.ListServicesRequest())).services
    tasks = (await call(request, "ListTasks", api.ListTasksRequest())).tasks
    nodes = (await call(request, "ListNodes", api.ListNodesRequest())).nodes
    return json_response(network_json(network, network_services_json(network, services, tasks, nodes)))


async def create_network(request: web.Request) -> web.Response:
    spec = network_spec(await json_body(request))
    try:
        reply = await request.app[ENGINE](request, "CreateNetwork", api.CreateNetworkRequest(spec=spec))
    except CallFailed as err:
        if err.code == grpc.StatusCode.ALREADY_EXISTS:  # dockerd's own check, in its own words
            raise ApiError(409, err.details) from None
        raise
    return json_response({"Id": reply.network.id, "Warning": ""}, 201)


async def remove_network(request: web.Request) -> web.Response:
    ref = request.match_info["ref"]
    try:
        await request.app[ENGINE](request, "RemoveNetwork", api.RemoveNetworkRequest(network_id=ref))
    except CallFailed as err:
        if err.code == grpc.StatusCode.NOT_FOUND:
            raise _not_found(ref) from None
        if err.code == grpc.StatusCode.FAILED_PRECONDITION:
            # In use (or the ingress network): dockerd's Forbidden, as for a local network
            # with endpoints; the text is the manager's, which names the services.
            raise ApiError(403, http_error(err)[1]) from None
        raise
    return web.Response(status=204)


def add_network_routes(add: Callable[[str, str, Handler], None]) -> None:
    add("GET", "/networks", list_networks)
    add("GET", "/networks/{ref}", inspect_network)
    add("POST", "/networks/create", create_network)
    add("DELETE", "/networks/{ref}", remove_network)

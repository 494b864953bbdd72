"""``/nodes``, ``/swarm`` and the system endpoints (``/_ping``, ``/version``, ``/info``)."""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import Any

from aiohttp import web

from minisw.manager.engineapi.calls import ENGINE
from minisw.manager.engineapi.translate import JSONObject, node_spec
from minisw.manager.engineapi.wire import (
    API_VERSION,
    MIN_API_VERSION,
    SERVER_VERSION,
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
from minisw.proto.engine import node_json, swarm_json

__all__ = ["add_node_routes"]

NODE_FILTERS = ("id", "name", "role", "membership", "label", "node.label")


def _labels_match(labels: Any, wanted: list[str]) -> bool:
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def _node_matches(node: pb.Node, f: dict[str, list[str]]) -> bool:
    name = node.spec.annotations.name or node.description.hostname
    checks: list[tuple[str, Callable[[], bool]]] = [
        ("id", lambda: any(node.id.startswith(v) for v in f["id"])),
        ("name", lambda: any(name.startswith(v) for v in f["name"])),
        ("role", lambda: ("manager" if node.role == pb.MANAGER else "worker") in f["role"]),
        ("membership", lambda: pb.NodeSpec.Membership.Name(node.spec.membership).lower() in f["membership"]),
        ("label", lambda: _labels_match(node.description.engine.labels, f["label"])),
        ("node.label", lambda: _labels_match(node.spec.annotations.labels, f["node.label"])),
    ]
    return all(check() for key, check in checks if key in f)


async def list_nodes(request: web.Request) -> web.Response:
    f = filters(request, NODE_FILTERS)
    for role in f.get("role", []):
        if role not in ("manager", "worker"):
            raise ApiError(400, f"Invalid role filter value: {role}")
    reply = await request.app[ENGINE](request, "ListNodes", api.ListNodesRequest())
    return json_response([node_json(n) for n in reply.nodes if _node_matches(n, f)])


async def get_node(request: web.Request) -> web.Response:
    reply = await request.app[ENGINE](request, "GetNode", api.GetNodeRequest(node_id=request.match_info["ref"]))
    return json_response(node_json(reply.node))


async def update_node(request: web.Request) -> web.Response:
    call = request.app[ENGINE]
    ref = request.match_info["ref"]
    version = version_param(request, "node")
    body = await json_body(request)
    current = (await call(request, "GetNode", api.GetNodeRequest(node_id=ref))).node
    spec = node_spec(body, current.spec)
    await call(
        request,
        "UpdateNode",
        api.UpdateNodeRequest(node_id=current.id, node_version=pb.Version(index=version), spec=spec),
    )
    return empty_response()


async def remove_node(request: web.Request) -> web.Response:
    ref = request.match_info["ref"]
    await request.app[ENGINE](
        request, "RemoveNode", api.RemoveNodeRequest(node_id=ref, force=bool_param(request, "force"))
    )
    return empty_response()


async def get_swarm(request: web.Request) -> web.Response:
    reply = await request.app[ENGINE](request, "GetCluster", api.Empty())
    return json_response(swarm_json(reply.cluster))


async def update_swarm(request: web.Request) -> web.Response:
    """Join-token rotation; the swarm's settings themselves are not Docker's to change here."""
    call = request.app[ENGINE]
    version = version_param(request, "swarm")
    body = JSONObject(await json_body(request), "Spec")
    cluster = (await call(request, "GetCluster", api.Empty())).cluster
    current = swarm_json(cluster)["Spec"]
    for key in ("Orchestration", "Dispatcher", "CAConfig"):
        sent = body.raw(key)
        if sent is not None and any(sent.get(k) not in (None, v) for k, v in current[key].items()):
            raise ApiError(400, f"changing the swarm's {key} is not supported by minisw")
    if bool_param(request, "rotateManagerUnlockKey"):
        raise ApiError(400, "minisw has no autolock, so there is no unlock key to rotate")
    if version != cluster.meta.version.index:
        raise ApiError(500, "rpc error: code = Unknown desc = update out of sequence")
    worker, manager = bool_param(request, "rotateWorkerToken"), bool_param(request, "rotateManagerToken")
    if worker or manager:
        await call(request, "RotateJoinToken", api.RotateJoinTokenRequest(worker=worker, manager=manager))
    return empty_response()


async def ping(request: web.Request) -> web.Response:
    response = web.Response(body=b"" if request.method == "HEAD" else b"OK", content_type="text/plain")
    response.headers["Swarm"] = "active/manager"
    response.headers["Cache-Control"] = "no-cache, no-store, must-revalidate"
    response.headers["Pragma"] = "no-cache"
    return response


async def version(request: web.Request) -> web.Response:
    uname = platform.uname()
    return json_response(
        {
            "Platform": {"Name": "minisw"},
            "Components": [{"Name": "minisw", "Version": SERVER_VERSION, "Details": {"ApiVersion": API_VERSION}}],
            "Version": SERVER_VERSION,
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "",
            "GoVersion": "",
            "Os": "linux",
            "Arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(uname.machine, uname.machine),
            "KernelVersion": uname.release,
            "BuildTime": "",
        }
    )


async def info(request: web.Request) -> web.Response:
    call = request.app[ENGINE]
    reply = await call(request, "Info", api.Empty())
    nodes = (await call(request, "ListNodes", api.ListNodesRequest())).nodes
    cluster = (await call(request, "GetCluster", api.Empty())).cluster
    managers = [n for n in nodes if n.role == pb.MANAGER]
    me = next((n for n in nodes if n.id == reply.node_id), None)
    uname = platform.uname()
    return json_response(
        {
            "ID": reply.node_id,
            "Name": me.description.hostname if me else "",
            "ServerVersion": SERVER_VERSION,
            "OSType": "linux",
            "OperatingSystem": "minisw manager",
            "KernelVersion": uname.release,
            "Architecture": uname.machine,
            "Swarm": {
                "NodeID": reply.node_id,
                "NodeAddr": me.status.addr if me else "",
                "LocalNodeState": "active",
                "ControlAvailable": True,
                "Error": "",
                "RemoteManagers": [{"NodeID": n.id, "Addr": n.manager_status.addr} for n in managers],
                "Nodes": len(nodes),
                "Managers": len(managers),
                "Cluster": swarm_json(cluster, with_join_tokens=False),
            },
        }
    )


async def distribution(request: web.Request) -> web.Response:
    """Digest pinning: minisw does not ask registries, so each node pulls the tag (docker then warns)."""
    image = request.match_info["name"]
    raise ApiError(404, f"minisw does not resolve image digests: each node pulls {image} itself")


def add_node_routes(add: Callable[[str, str, Handler], None]) -> None:
    add("GET", "/_ping", ping)  # GET routes answer HEAD too
    add("GET", "/version", version)
    add("GET", "/info", info)
    add("GET", "/distribution/{name:.+}/json", distribution)
    add("GET", "/nodes", list_nodes)
    add("GET", "/nodes/{ref}", get_node)
    add("POST", "/nodes/{ref}/update", update_node)
    add("DELETE", "/nodes/{ref}", remove_node)
    add("GET", "/swarm", get_swarm)
    add("POST", "/swarm/update", update_swarm)

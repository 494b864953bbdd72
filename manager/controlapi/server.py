"""ControlAPI servicer: validate, read or write the store, map errors to gRPC codes.

Every call runs on the leader: a follower forwards it (``minisw.manager.forward``), so a client
never needs to know who leads and reads always see every acknowledged write.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

from minisw.manager import ids
from minisw.manager.auth import Authorizer, Denied
from minisw.manager.controlapi.networks import (
    allocate_virtual_ips,
    check_removable,
    new_network,
    resolve_attachments,
    resolve_network,
)
from minisw.manager.controlapi.ports import allocate_endpoint
from minisw.manager.controlapi.validate import validate_node_spec, validate_service_spec
from minisw.manager.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    ManagerError,
    NameConflict,
    NoQuorum,
    NotFound,
    SequenceConflict,
)
from minisw.manager.forward import FORWARDED_MARK
from minisw.manager.state.store import MemoryStore, ReadTx, WriteTx
from minisw.proto import control_pb2 as api
from minisw.proto import control_pb2_grpc as api_grpc
from minisw.proto import objects_pb2 as pb
from minisw.proto.defaults import interpolate_service_spec
from minisw.proto.model import is_job, is_task_dirty, job_service_counts
from minisw.proto.pki import MANAGER_OU, parse_token

__all__ = ["ControlServer", "LogSubscriptions", "ManagerHandle", "grpc_code_for"]

log = logging.getLogger(__name__)
R = TypeVar("R")


class LogSubscriptions(Protocol):
    """The log broker (manager/logbroker.py): serves a subscription on the leader, forwards it elsewhere."""

    def subscribe(
        self, request: api.SubscribeLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[api.SubscribeLogsMessage, None]: ...


class ManagerHandle(Protocol):
    """What the control API needs from its manager."""

    node_id: str
    store: MemoryStore
    authorizer: Authorizer | None
    logs: LogSubscriptions | None

    def is_leader(self) -> bool: ...
    def leader_control_addr(self) -> str | None: ...
    def no_leader_message(self) -> str: ...
    def raft_info(self) -> tuple[int, int, int, int, str | None]:
        """(members, reachable, commit index, term, leader raft address)."""
        ...

    def check_quorum(self) -> None: ...
    async def read_barrier(self) -> None:
        """Returns once this leader sees every write acknowledged before the call."""
        ...

    async def join_manager(self, request: api.JoinManagerRequest, node_id: str) -> api.JoinManagerResponse: ...
    async def remove_manager(self, raft_addr: str) -> None: ...
    async def hand_over_leadership(self) -> None: ...
    async def forward(
        self, method: str, request: Any, context: grpc.aio.ServicerContext, handed_over: bool = False
    ) -> Any: ...


class _HandedOver(Exception):
    """This leader handed leadership over before its own demotion: the new leader takes the call."""


def grpc_code_for(err: ManagerError) -> grpc.StatusCode:
    if isinstance(err, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(err, AlreadyExists | NameConflict):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(err, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(err, FailedPrecondition):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(err, NoQuorum):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(err, SequenceConflict):
        return grpc.StatusCode.UNKNOWN  # Swarm's "rpc error: code = Unknown desc = update out of sequence"
    return grpc.StatusCode.INTERNAL


def resolve(items: list[Any], ref: str, kind: str, name_of: Callable[[Any], str]) -> Any:
    """Docker's lookup order: full ID, then exact name (case-insensitive), then unique ID prefix."""
    for item in items:
        if item.id == ref:
            return item
    lowered = ref.lower()
    for item in items:
        if name_of(item).lower() == lowered:
            return item
    matches = [item for item in items if ref and item.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InvalidArgument(f"{kind} {ref} is ambiguous ({len(matches)} matches found)")
    raise NotFound(f"{kind} {ref} not found")


def _service_name(s: pb.Service) -> str:
    return s.spec.annotations.name


def _node_name(n: pb.Node) -> str:
    return n.description.hostname or n.spec.annotations.name


# Calls that only read: each first waits for a Raft read barrier (writes commit through Raft anyway).
_READS = frozenset(
    {
        "GetService",
        "ListServices",
        "ListTasks",
        "GetTask",
        "ListNodes",
        "GetNode",
        "GetCluster",
        "Info",
        "GetNetwork",
        "ListNetworks",
    }
)


class ControlServer(api_grpc.ControlServicer):
    """The Control service of one manager."""

    def __init__(self, manager: ManagerHandle) -> None:
        self._m = manager
        self._store = manager.store

    async def _route(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext,
        handler: Callable[[Any], Awaitable[R]],
    ) -> R:
        try:
            assert self._m.authorizer is not None
            self._m.authorizer.require(context, MANAGER_OU)
        except Denied as err:
            await context.abort(err.code, str(err))
            raise AssertionError("unreachable") from err
        if not self._m.is_leader():
            return await self._m.forward(method, request, context)  # type: ignore[no-any-return]
        try:
            self._m.check_quorum()
            if method in _READS:
                await self._m.read_barrier()  # a leader cut off from the others must not answer stale
            return await handler(request)
        except _HandedOver:
            return await self._m.forward(method, request, context, handed_over=True)  # type: ignore[no-any-return]
        except ManagerError as err:
            await context.abort(grpc_code_for(err), str(err))
            raise AssertionError("unreachable") from err

    # ---- services --------------------------------------------------------------------------
    async def CreateService(self, request: api.CreateServiceRequest, context: Any) -> api.ServiceResponse:
        return await self._route("CreateService", request, context, self._create_service)

    async def _create_service(self, request: api.CreateServiceRequest) -> api.ServiceResponse:
        spec = request.spec
        validate_service_spec(spec)
        service_id = ids.new_id()

        def create(tx: WriteTx) -> None:
            if tx.service_by_name(spec.annotations.name) is not None:
                raise NameConflict(
                    f"name conflicts with an existing object: service {spec.annotations.name} already exists"
                )
            resolve_attachments(tx, spec)
            endpoint = allocate_endpoint(service_id, spec.endpoint, tx.services())
            allocate_virtual_ips(tx, service_id, spec, endpoint)
            service = pb.Service(id=service_id, spec=spec, spec_version=pb.Version(), endpoint=endpoint)
            if is_job(spec):
                service.job_status.last_execution.GetCurrentTime()
            tx.create(service)

        await self._store.update(create)
        return api.ServiceResponse(service=self._get_by_id(service_id))

    def _get_by_id(self, service_id: str) -> pb.Service:
        service = self._store.view(lambda tx: tx.get_service(service_id))
        if service is None:
            raise NotFound(f"service {service_id} not found")
        return service

    def _resolve_service(self, tx: ReadTx, ref: str) -> pb.Service:
        if not ref:
            raise InvalidArgument("a service ID or name must be provided")
        direct = tx.get_service(ref) or tx.service_by_name(ref)
        if direct is not None:
            return direct
        return resolve(tx.services(), ref, "service", _service_name)  # type: ignore[no-any-return]

    async def GetService(self, request: api.GetServiceRequest, context: Any) -> api.ServiceResponse:
        return await self._route("GetService", request, context, self._get_service)

    async def _get_service(self, request: api.GetServiceRequest) -> api.ServiceResponse:
        service = self._store.view(lambda tx: self._resolve_service(tx, request.service_id))
        if request.insert_defaults:
            service.spec.CopyFrom(interpolate_service_spec(service.spec))
            if service.HasField("previous_spec"):
                service.previous_spec.CopyFrom(interpolate_service_spec(service.previous_spec))
        return api.ServiceResponse(service=service)

    async def ListServices(self, request: api.ListServicesRequest, context: Any) -> api.ListServicesResponse:
        return await self._route("ListServices", request, context, self._list_services)

    async def _list_services(self, request: api.ListServicesRequest) -> api.ListServicesResponse:
        def read(tx: ReadTx) -> api.ListServicesResponse:
            out = api.ListServicesResponse()
            for service in tx.services():
                name = service.spec.annotations.name
                if request.id_prefixes and not any(service.id.startswith(p) for p in request.id_prefixes):
                    continue
                if request.name_prefixes and not any(name.startswith(p) for p in request.name_prefixes):
                    continue
                labels = service.spec.annotations.labels
                if any(labels.get(k) != v if v else k not in labels for k, v in request.labels.items()):
                    continue
                out.services.append(service)
                out.statuses.append(_service_status(service, tx.tasks_by_service(service.id)))
            return out

        return self._store.view(read)

    async def UpdateService(self, request: api.UpdateServiceRequest, context: Any) -> api.ServiceResponse:
        return await self._route("UpdateService", request, context, self._update_service)

    async def _update_service(self, request: api.UpdateServiceRequest) -> api.ServiceResponse:
        if not request.rollback:
            validate_service_spec(request.spec)

        def update(tx: WriteTx) -> str:
            service = self._resolve_service(tx, request.service_id)
            if request.service_version.index != service.meta.version.index:
                raise SequenceConflict()
            if request.rollback:
                if not service.HasField("previous_spec"):
                    raise FailedPrecondition(f"service {service.spec.annotations.name} does not have a previous spec")
                old_spec, old_version = pb.ServiceSpec(), pb.Version()
                old_spec.CopyFrom(service.spec)
                old_version.CopyFrom(service.spec_version)
                service.spec.CopyFrom(service.previous_spec)
                service.spec_version.CopyFrom(service.previous_spec_version)
                service.previous_spec.CopyFrom(old_spec)
                service.previous_spec_version.CopyFrom(old_version)
                service.update_status.CopyFrom(
                    pb.UpdateStatus(state=pb.UpdateStatus.ROLLBACK_STARTED, message="manually requested rollback")
                )
                service.update_status.started_at.GetCurrentTime()
            else:
                spec = request.spec
                if spec.WhichOneof("mode") != service.spec.WhichOneof("mode"):
                    raise InvalidArgument("service mode change is not allowed")
                if spec.annotations.name != service.spec.annotations.name:
                    raise InvalidArgument("renaming services is not supported")
                service.previous_spec.CopyFrom(service.spec)
                service.previous_spec_version.CopyFrom(service.spec_version)
                service.spec.CopyFrom(spec)
                service.spec_version.CopyFrom(request.service_version)
                service.ClearField("update_status")
            if service.HasField("job_status"):  # any update of a job runs it again (swarmkit)
                service.job_status.job_iteration.index += 1
                service.job_status.last_execution.GetCurrentTime()
            if not request.rollback:
                resolve_attachments(tx, service.spec)
            endpoint = allocate_endpoint(service.id, service.spec.endpoint, tx.services())
            endpoint.virtual_ips.extend(service.endpoint.virtual_ips)
            allocate_virtual_ips(tx, service.id, service.spec, endpoint)
            service.endpoint.CopyFrom(endpoint)
            tx.update(service)
            return service.id

        service_id = await self._store.update(update)
        return api.ServiceResponse(service=self._get_by_id(service_id))

    async def RemoveService(self, request: api.RemoveServiceRequest, context: Any) -> api.Empty:
        return await self._route("RemoveService", request, context, self._remove_service)

    async def _remove_service(self, request: api.RemoveServiceRequest) -> api.Empty:
        def remove(tx: WriteTx) -> None:
            tx.delete(self._resolve_service(tx, request.service_id))

        await self._store.update(remove)
        return api.Empty()

    # ---- networks --------------------------------------------------------------------------
    async def CreateNetwork(self, request: api.CreateNetworkRequest, context: Any) -> api.NetworkResponse:
        return await self._route("CreateNetwork", request, context, self._create_network)

    async def _create_network(self, request: api.CreateNetworkRequest) -> api.NetworkResponse:
        def create(tx: WriteTx) -> pb.Network:
            network = new_network(tx, request.spec)
            tx.create(network)
            return network

        network = await self._store.update(create)
        return api.NetworkResponse(network=self._store.view(lambda tx: tx.get_network(network.id)))

    async def GetNetwork(self, request: api.GetNetworkRequest, context: Any) -> api.NetworkResponse:
        return await self._route("GetNetwork", request, context, self._get_network)

    async def _get_network(self, request: api.GetNetworkRequest) -> api.NetworkResponse:
        return api.NetworkResponse(network=self._store.view(lambda tx: resolve_network(tx, request.network_id)))

    async def ListNetworks(self, request: api.ListNetworksRequest, context: Any) -> api.ListNetworksResponse:
        return await self._route("ListNetworks", request, context, self._list_networks)

    async def _list_networks(self, request: api.ListNetworksRequest) -> api.ListNetworksResponse:
        networks = self._store.view(lambda tx: tx.networks())
        return api.ListNetworksResponse(networks=sorted(networks, key=lambda n: n.spec.annotations.name))

    async def RemoveNetwork(self, request: api.RemoveNetworkRequest, context: Any) -> api.Empty:
        return await self._route("RemoveNetwork", request, context, self._remove_network)

    async def _remove_network(self, request: api.RemoveNetworkRequest) -> api.Empty:
        def remove(tx: WriteTx) -> None:
            network = resolve_network(tx, request.network_id)
            check_removable(tx, network)
            tx.delete(network)

        await self._store.update(remove)
        return api.Empty()

    # ---- tasks -----------------------------------------------------------------------------
    async def ListTasks(self, request: api.ListTasksRequest, context: Any) -> api.ListTasksResponse:
        return await self._route("ListTasks", request, context, self._list_tasks)

    async def _list_tasks(self, request: api.ListTasksRequest) -> api.ListTasksResponse:
        def read(tx: ReadTx) -> api.ListTasksResponse:
            if request.service_ids:
                services = [self._resolve_service(tx, ref) for ref in request.service_ids]
                tasks = [t for s in services for t in tx.tasks_by_service(s.id)]
            else:
                tasks = tx.tasks()
            # Docker's daemon resolves node filters as it resolves node references (an unknown
            # node is an error, not an empty list); "self" is the client's to resolve.
            node_ids = {
                (tx.get_node(ref) or resolve(tx.nodes(), ref, "node", _node_name)).id for ref in request.node_ids
            }
            services_by_id = {s.id: s for s in tx.services()}
            out = api.ListTasksResponse()
            for task in tasks:
                if node_ids and task.node_id not in node_ids:
                    continue
                if request.desired_states and task.desired_state not in request.desired_states:
                    continue
                if request.id_prefixes and not any(task.id.startswith(p) for p in request.id_prefixes):
                    continue
                if request.up_to_date:
                    service = services_by_id.get(task.service_id)
                    node = tx.get_node(task.node_id) if task.node_id else None
                    if service is None or is_task_dirty(service, task, node):
                        continue
                out.tasks.append(task)
            return out

        return self._store.view(read)

    async def GetTask(self, request: api.GetTaskRequest, context: Any) -> api.TaskResponse:
        return await self._route("GetTask", request, context, self._get_task)

    async def _get_task(self, request: api.GetTaskRequest) -> api.TaskResponse:
        def read(tx: ReadTx) -> pb.Task:
            task = tx.get_task(request.task_id)
            if task is not None:
                return task
            return resolve(tx.tasks(), request.task_id, "task", lambda t: "")  # type: ignore[no-any-return]

        return api.TaskResponse(task=self._store.view(read))

    # ---- nodes -----------------------------------------------------------------------------
    def _with_manager_status(self, node: pb.Node) -> pb.Node:
        """Fill in leadership and reachability, which Raft knows now and the store does not keep."""
        if node.role != pb.MANAGER:
            return node
        _, _, _, _, leader = self._m.raft_info()
        node.manager_status.leader = bool(leader) and node.manager_status.raft_addr == leader
        if node.manager_status.reachability == pb.ManagerStatus.UNKNOWN:
            node.manager_status.reachability = pb.ManagerStatus.REACHABLE
        return node

    async def ListNodes(self, request: api.ListNodesRequest, context: Any) -> api.ListNodesResponse:
        return await self._route("ListNodes", request, context, self._list_nodes)

    async def _list_nodes(self, request: api.ListNodesRequest) -> api.ListNodesResponse:
        nodes = self._store.view(lambda tx: tx.nodes())
        out = api.ListNodesResponse()
        names = {n.lower() for n in request.names}
        for node in nodes:
            if request.id_prefixes and not any(node.id.startswith(p) for p in request.id_prefixes):
                continue
            if names and _node_name(node).lower() not in names:
                continue
            if request.roles and node.role not in request.roles:
                continue
            out.nodes.append(self._with_manager_status(node))
        return out

    def _resolve_node(self, tx: ReadTx, ref: str) -> pb.Node:
        if ref == "self":
            ref = self._m.node_id
        node = tx.get_node(ref)
        if node is not None:
            return node
        return resolve(tx.nodes(), ref, "node", _node_name)  # type: ignore[no-any-return]

    async def GetNode(self, request: api.GetNodeRequest, context: Any) -> api.NodeResponse:
        return await self._route("GetNode", request, context, self._get_node)

    async def _get_node(self, request: api.GetNodeRequest) -> api.NodeResponse:
        node = self._store.view(lambda tx: self._resolve_node(tx, request.node_id))
        return api.NodeResponse(node=self._with_manager_status(node))

    async def UpdateNode(self, request: api.UpdateNodeRequest, context: Any) -> api.NodeResponse:
        return await self._route("UpdateNode", request, context, self._update_node)

    async def _update_node(self, request: api.UpdateNodeRequest) -> api.NodeResponse:
        validate_node_spec(request.spec)
        await self._hand_over_before_own_demotion(request)

        def update(tx: WriteTx) -> str:
            node = self._resolve_node(tx, request.node_id)
            if request.node_version.index != node.meta.version.index:
                raise SequenceConflict()
            demoting = node.role == pb.MANAGER and request.spec.desired_role == pb.WORKER
            if request.spec.desired_role == pb.MANAGER and node.role == pb.WORKER:
                if node.status.state != pb.NodeStatus.READY:
                    raise FailedPrecondition(f"node {node.id} is not ready: only a running node can be promoted")
                # Its agent learns the new role, gets a manager certificate and starts a manager,
                # which joins Raft; the role becomes MANAGER then (node.role follows the Raft membership).
            if demoting:
                self._check_demotion(tx, node)
                # The role changes first, while the node is still a Raft member, so that it learns
                # of it and its manager steps down; then it leaves Raft.
                node.role = pb.WORKER
                node.ClearField("manager_status")
            node.spec.CopyFrom(request.spec)
            tx.update(node)
            return node.id

        raft_addr = self._store.view(lambda tx: self._resolve_node(tx, request.node_id)).manager_status.raft_addr
        node_id = await self._store.update(update)
        if raft_addr and request.spec.desired_role == pb.WORKER:
            await self._m.remove_manager(raft_addr)
        node = self._store.view(lambda tx: tx.get_node(node_id))
        assert node is not None
        return api.NodeResponse(node=self._with_manager_status(node))

    async def _hand_over_before_own_demotion(self, request: api.UpdateNodeRequest) -> None:
        """Swarm demotes the leader by handing leadership over first; the new leader then demotes
        this node as any other. The refusals come first, so a refused demotion moves nothing."""

        def leader_demoted(tx: ReadTx) -> bool:
            node = self._resolve_node(tx, request.node_id)
            if node.role != pb.MANAGER or request.spec.desired_role != pb.WORKER:
                return False
            if node.manager_status.raft_addr != self._m.raft_info()[4]:
                return False
            if request.node_version.index != node.meta.version.index:
                raise SequenceConflict()
            self._check_demotion(tx, node)
            return True

        if self._store.view(leader_demoted):
            await self._m.hand_over_leadership()
            raise _HandedOver()

    def _check_demotion(self, tx: ReadTx, node: pb.Node) -> None:
        """Swarm's rules: never the last manager, never a loss of quorum."""
        managers = [n for n in tx.nodes() if n.role == pb.MANAGER]
        if len(managers) <= 1:
            raise FailedPrecondition("attempting to demote the last manager of the swarm")
        members, reachable, _, _, _ = self._m.raft_info()
        remaining = members - 1
        if reachable - 1 < remaining // 2 + 1:
            raise FailedPrecondition("can't remove member from the raft: this would result in a loss of quorum")

    async def RemoveNode(self, request: api.RemoveNodeRequest, context: Any) -> api.Empty:
        return await self._route("RemoveNode", request, context, self._remove_node)

    async def _remove_node(self, request: api.RemoveNodeRequest) -> api.Empty:
        def remove(tx: WriteTx) -> None:
            node = self._resolve_node(tx, request.node_id)
            if node.role == pb.MANAGER:
                raise FailedPrecondition(
                    f"node {node.id} is a cluster manager and is a member of the raft cluster. "
                    "It must be demoted to worker before removal"
                )
            if node.status.state != pb.NodeStatus.DOWN and not request.force:
                raise FailedPrecondition(
                    f"node {node.id} is not down and can't be removed; use --force to remove it anyway"
                )
            tx.delete(node)
            cluster = tx.get_cluster()
            if cluster is not None and node.id not in cluster.removed_nodes:
                cluster.removed_nodes.append(node.id)  # its certificate is refused from now on
                tx.update(cluster)

        await self._store.update(remove)
        return api.Empty()

    # ---- cluster ---------------------------------------------------------------------------
    async def GetCluster(self, request: api.Empty, context: Any) -> api.ClusterResponse:
        return await self._route("GetCluster", request, context, self._get_cluster)

    async def _get_cluster(self, request: api.Empty) -> api.ClusterResponse:
        cluster = self._store.view(lambda tx: tx.get_cluster())
        if cluster is None:
            raise FailedPrecondition("the cluster is still being initialised; try again in a moment")
        cluster.ClearField("root_ca_key")  # the CA's key never leaves the managers' store
        return api.ClusterResponse(cluster=cluster)

    async def RotateJoinToken(self, request: api.RotateJoinTokenRequest, context: Any) -> api.ClusterResponse:
        return await self._route("RotateJoinToken", request, context, self._rotate_join_token)

    async def _rotate_join_token(self, request: api.RotateJoinTokenRequest) -> api.ClusterResponse:
        def rotate(tx: WriteTx) -> None:
            cluster = tx.get_cluster()
            if cluster is None:
                raise FailedPrecondition("the cluster is still being initialised; try again in a moment")
            digest, _ = parse_token(cluster.join_tokens.worker)
            if request.worker:
                cluster.join_tokens.worker = ids.generate_join_token(digest)
            if request.manager:
                cluster.join_tokens.manager = ids.generate_join_token(digest)
            tx.update(cluster)

        await self._store.update(rotate)
        return await self._get_cluster(api.Empty())

    async def Info(self, request: api.Empty, context: Any) -> api.InfoResponse:
        reply: api.InfoResponse = await self._route("Info", request, context, self._info)
        reply.node_id = self._m.node_id  # "self" is the manager the client talks to, not the leader
        reply.store_digest = self._store.digest()
        return reply

    async def _info(self, request: api.Empty) -> api.InfoResponse:
        members, reachable, commit, term, _ = self._m.raft_info()

        def read(tx: ReadTx) -> api.InfoResponse:
            cluster = tx.get_cluster()
            return api.InfoResponse(
                cluster_id=cluster.id if cluster else "",
                node_id=self._m.node_id,
                leader_addr=self._m.leader_control_addr() or "",
                managers=members,
                reachable_managers=reachable,
                nodes=tx.count("node"),
                raft_commit_index=commit,
                raft_term=term,
            )

        return self._store.view(read)

    async def SubscribeLogs(
        self, request: api.SubscribeLogsRequest, context: Any
    ) -> AsyncIterator[api.SubscribeLogsMessage]:
        """A stream, so not through ``_route``: the log broker serves it or forwards it to the leader."""
        try:
            assert self._m.authorizer is not None and self._m.logs is not None
            self._m.authorizer.require(context, MANAGER_OU)
        except Denied as err:
            await context.abort(err.code, str(err))
            return
        async with contextlib.aclosing(self._m.logs.subscribe(request, context)) as messages:
            async for message in messages:
                yield message

    async def JoinManager(self, request: api.JoinManagerRequest, context: Any) -> api.JoinManagerResponse:
        assert self._m.authorizer is not None
        forwarded = FORWARDED_MARK in dict(context.invocation_metadata() or ())
        if not forwarded:
            # The joining manager's identity is its certificate; a forwarded call carries it along.
            peer = self._m.authorizer.peer(context)
            request.node_id = peer.node_id if peer is not None else ""
        return await self._route("JoinManager", request, context, lambda r: self._m.join_manager(r, r.node_id))


def _service_status(service: pb.Service, tasks: list[pb.Task]) -> api.ServiceStatus:
    running = sum(1 for t in tasks if t.status.state == pb.RUNNING)
    completed = sum(1 for t in tasks if t.status.state == pb.COMPLETE)
    if is_job(service.spec):
        running, desired, completed = job_service_counts(service, tasks)
    elif service.spec.HasField("replicated"):
        desired = service.spec.replicated.replicas
    else:
        desired = sum(1 for t in tasks if t.desired_state == pb.RUNNING)
    return api.ServiceStatus(
        service_id=service.id, running_tasks=running, desired_tasks=desired, completed_tasks=completed
    )

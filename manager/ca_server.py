"""NodeCA servicer: certificates for joining nodes (by join token) and renewals (by certificate).

Issuing creates the node in the store, so it runs on the leader; followers forward it.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any, Protocol

import grpc

from minisw.manager import ids
from minisw.manager.auth import Authorizer, Denied
from minisw.manager.ca import DEFAULT_CERT_EXPIRY, RootCA
from minisw.manager.state.store import MemoryStore, WriteTx
from minisw.proto import ca_pb2 as capb
from minisw.proto import ca_pb2_grpc as capb_grpc
from minisw.proto import objects_pb2 as pb
from minisw.proto.pki import MANAGER_OU, WORKER_OU, TokenError, parse_token
from minisw.proto.timeutil import seconds

__all__ = ["NodeCAServer"]

BAD_TOKEN = "A valid join token is necessary to join this cluster"


class CAHost(Protocol):
    store: MemoryStore
    authorizer: Authorizer | None

    def is_leader(self) -> bool: ...
    async def forward_ca(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any: ...


def _root(cluster: pb.Cluster) -> RootCA:
    return RootCA(cluster.root_ca_cert, cluster.root_ca_key)


def _expiry(cluster: pb.Cluster) -> dt.timedelta:
    cfg = cluster.spec.ca_config
    if cfg.HasField("node_cert_expiry") and seconds(cfg.node_cert_expiry) > 0:
        return dt.timedelta(seconds=seconds(cfg.node_cert_expiry))
    return DEFAULT_CERT_EXPIRY


class NodeCAServer(capb_grpc.NodeCAServicer):
    def __init__(self, host: CAHost) -> None:
        self._host = host

    async def IssueNodeCertificate(
        self, request: capb.IssueNodeCertificateRequest, context: Any
    ) -> capb.NodeCertificateResponse:
        if not self._host.is_leader():
            return await self._host.forward_ca("IssueNodeCertificate", request, context)  # type: ignore[no-any-return]
        cluster = self._host.store.view(lambda tx: tx.get_cluster())
        if cluster is None or not cluster.root_ca_cert:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the cluster is still being initialised; try again")
            raise AssertionError("unreachable")
        try:
            digest, _ = parse_token(request.token)
        except TokenError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            raise AssertionError("unreachable") from err
        root = _root(cluster)
        if digest != root.digest:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{BAD_TOKEN}: the token's CA digest is not this cluster's (a token from another cluster?)",
            )
        if secrets.compare_digest(request.token, cluster.join_tokens.manager):
            role = MANAGER_OU
        elif secrets.compare_digest(request.token, cluster.join_tokens.worker):
            role = WORKER_OU
        else:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{BAD_TOKEN}: the token is not current (rotated, or mistyped); get the current one with "
                "`minisw join-token worker -q` on a manager",
            )
            raise AssertionError("unreachable")
        node_id = ids.new_id()
        try:
            certificate = root.sign(request.csr, node_id, role, cluster.id, _expiry(cluster))
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad certificate request: {err}")
            raise AssertionError("unreachable") from err

        def create(tx: WriteTx) -> None:
            node = pb.Node(id=node_id, role=pb.MANAGER if role == MANAGER_OU else pb.WORKER)
            node.spec.desired_role = node.role
            node.spec.membership = pb.NodeSpec.ACCEPTED
            node.description.hostname = request.hostname
            tx.create(node)

        await self._host.store.update(create)
        return capb.NodeCertificateResponse(node_id=node_id, certificate=certificate, root_ca=root.cert_pem)

    async def RenewNodeCertificate(
        self, request: capb.RenewNodeCertificateRequest, context: Any
    ) -> capb.NodeCertificateResponse:
        try:
            assert self._host.authorizer is not None
            peer = self._host.authorizer.require(context, MANAGER_OU, WORKER_OU)
        except Denied as err:
            await context.abort(err.code, str(err))
            raise AssertionError("unreachable") from err
        # Any manager holds the CA (replicated), and renewing writes nothing: sign here. (Forwarding
        # would make the leader see this manager, not the caller, as the peer.)
        cluster = self._host.store.view(lambda tx: tx.get_cluster())
        if cluster is None or not cluster.root_ca_key:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this manager does not hold the CA yet; try again")
            raise AssertionError("unreachable")
        node = self._host.store.view(lambda tx: tx.get_node(peer.node_id))
        role = peer.role
        if node is not None:
            # A node being promoted gets its manager certificate before it joins Raft.
            manager = node.role == pb.MANAGER or node.spec.desired_role == pb.MANAGER
            role = MANAGER_OU if manager else WORKER_OU
        certificate = _root(cluster).sign(request.csr, peer.node_id, role, cluster.id, _expiry(cluster))
        return capb.NodeCertificateResponse(node_id=peer.node_id, certificate=certificate, root_ca=cluster.root_ca_cert)

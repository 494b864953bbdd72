"""Who is calling: the peer's certificate, checked on every call (swarmkit ca/auth.go).

The TLS layer asks for a client certificate; here we accept it only if the cluster's root signed
it, it is valid now, it names this cluster, and its node was not removed. Then the role decides:
the control API is for managers; a worker gets Swarm's refusal.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc

from minisw.manager.ca import RootCA
from minisw.manager.state.store import MemoryStore
from minisw.proto.pki import MANAGER_OU, WORKER_OU, WORKER_REFUSAL, CertInfo, cert_info, insecure

__all__ = ["Authorizer", "Denied"]


class Denied(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Authorizer:
    """Checks peers against the cluster's root certificate and the store's removed nodes."""

    def __init__(self, store: MemoryStore, root_ca_pem: bytes, cluster_id: str) -> None:
        self._store = store
        self._root = RootCA(root_ca_pem, b"")
        self._cluster_id = cluster_id
        self._cache: dict[bytes, tuple[CertInfo, dt.datetime]] = {}

    def peer(self, context: grpc.aio.ServicerContext) -> CertInfo | None:
        """The verified identity of the caller, or None if it presented no certificate."""
        if insecure():
            return CertInfo("insecure", MANAGER_OU, self._cluster_id, dt.datetime.max, dt.datetime.min)
        auth: dict[str, Any] = context.auth_context() or {}
        pems = auth.get("x509_pem_cert") or []
        if not pems:
            return None
        pem = pems[0] if isinstance(pems[0], bytes) else str(pems[0]).encode()
        now = dt.datetime.now(dt.UTC)
        cached = self._cache.get(pem)
        if cached is None or cached[1] < now:
            if not self._root.issued(pem, now):
                raise Denied(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "certificate refused: it was not issued by this cluster's CA, or it has expired",
                )
            info = cert_info(pem)
            if info.cluster_id != self._cluster_id:
                raise Denied(grpc.StatusCode.UNAUTHENTICATED, "certificate refused: it belongs to another cluster")
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[pem] = cached = (info, min(info.not_after, now + dt.timedelta(minutes=1)))
        info = cached[0]
        removed = self._store.view(lambda tx: tx.get_cluster())
        if removed is not None and info.node_id in removed.removed_nodes:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED, f"Permission denied: node {info.node_id} was removed from swarm"
            )
        return info

    def require(self, context: grpc.aio.ServicerContext, *roles: str) -> CertInfo:
        info = self.peer(context)
        if info is None:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "a client certificate signed by the cluster's CA is required: pass --tls-dir DIR or set "
                "MINISW_TLS_DIR (a folder with ca.pem, cert.pem and key.pem)",
            )
        if info.role not in roles:
            if info.role == WORKER_OU:
                raise Denied(grpc.StatusCode.FAILED_PRECONDITION, WORKER_REFUSAL)
            raise Denied(grpc.StatusCode.PERMISSION_DENIED, f"role {info.role or 'none'} may not make this call")
        return info


async def abort_denied(context: grpc.aio.ServicerContext, err: Denied) -> None:
    await context.abort(err.code, str(err))

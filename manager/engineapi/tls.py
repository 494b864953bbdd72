"""Mutual TLS for the Engine API, as for the gRPC API, with a certificate docker can verify.

The docker CLI verifies that the server's certificate names the host it dials
(``-H tcp://IP:PORT --tlsverify``), and node certificates name only the node ID and
``swarm-manager``. So the Engine API serves a certificate of its own: the same identity (CN =
node ID, OU = swarm-manager, O = cluster ID), signed by the cluster's root CA from the store,
plus the listen address and the usual local names. It is re-issued at half its life; the
SSL context picks the new one up at the next handshake.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from pathlib import Path

from cryptography import x509

from minisw.manager.ca import RootCA
from minisw.manager.state.store import MemoryStore
from minisw.proto.pki import MANAGER_OU, TLSFiles, new_key_and_csr

__all__ = ["ServingCertificate", "peer_certificate_pem"]

log = logging.getLogger(__name__)

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
CERT_LIFETIME = dt.timedelta(days=90)


class ServingCertificate:
    """The Engine API's own certificate in ``directory``, and the SSL context that serves it."""

    def __init__(self, store: MemoryStore, node_id: str, host: str, directory: Path) -> None:
        self._store = store
        self._node_id = node_id
        self._host = host
        self.files = TLSFiles(directory)
        self.context: ssl.SSLContext | None = None

    async def issue(self) -> ssl.SSLContext:
        """Sign a certificate (waiting for the cluster object if this manager has just joined)."""
        while True:
            cluster = self._store.view(lambda tx: tx.get_cluster())
            if cluster is not None and cluster.root_ca_key:
                break
            await asyncio.sleep(0.2)
        root = RootCA(cluster.root_ca_cert, cluster.root_ca_key)
        key, csr = new_key_and_csr()
        names = [self._host, *LOCAL_NAMES] if self._host else list(LOCAL_NAMES)
        cert = root.sign(
            csr, self._node_id, MANAGER_OU, cluster.id, CERT_LIFETIME, addresses=list(dict.fromkeys(names))
        )
        self.files.write(root.cert_pem, cert, key)
        if self.context is None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.verify_mode = ssl.CERT_REQUIRED  # no certificate, no handshake
            context.load_verify_locations(cadata=root.cert_pem.decode())
            self.context = context
        self.context.load_cert_chain(self.files.cert, self.files.key)
        return self.context

    async def renew_forever(self) -> None:
        while True:
            cert = x509.load_pem_x509_certificate(self.files.cert.read_bytes())
            life = cert.not_valid_after_utc - cert.not_valid_before_utc
            due = cert.not_valid_before_utc + life / 2
            await asyncio.sleep(max(60.0, (due - dt.datetime.now(dt.UTC)).total_seconds()))
            try:
                await self.issue()
            except Exception as err:  # a failed renewal is retried; the current certificate still serves
                log.warning("renewing the Engine API certificate failed: %s", err)


def peer_certificate_pem(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bytes | None:
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return ssl.DER_cert_to_PEM_cert(der).encode() if der else None

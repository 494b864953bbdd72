"""The node side of the cluster's PKI, shared by managers, agents and the CLI.

Join tokens (``SWMTKN-1-<CA digest>-<secret>``), a node's TLS directory (``ca.pem``, ``cert.pem``,
``key.pem``, like Docker's ``DOCKER_CERT_PATH``), keys and certificate requests (the key never
leaves the node), certificate facts (node ID, role, cluster, expiry), gRPC credentials, and the
bootstrap that fetches the cluster's root certificate and accepts it only if its digest is the
one in the join token (no trust on first use). The signing side lives in ``minisw.manager.ca``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "MANAGER_OU",
    "WORKER_OU",
    "CertInfo",
    "TLSFiles",
    "TokenError",
    "ca_digest",
    "cert_info",
    "channel_credentials",
    "engine_api_addr",
    "fetch_root_ca",
    "new_key_and_csr",
    "parse_token",
    "to_base36",
]

MANAGER_OU = "swarm-manager"
WORKER_OU = "swarm-worker"
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


class TokenError(Exception):
    """The join token is malformed or does not belong to this cluster."""


def to_base36(value: int, width: int) -> str:
    digits = []
    while value:
        value, rem = divmod(value, 36)
        digits.append(_ALPHABET[rem])
    return "".join(reversed(digits)).rjust(width, "0")


def ca_digest(ca_pem: bytes) -> str:
    """The root certificate's SHA-256 in base 36, 50 characters, as join tokens carry it."""
    der = x509.load_pem_x509_certificate(ca_pem).public_bytes(serialization.Encoding.DER)
    return to_base36(int.from_bytes(hashlib.sha256(der).digest(), "big"), 50)


def parse_token(token: str) -> tuple[str, str]:
    """(CA digest, secret) of a well-formed token."""
    parts = token.strip().split("-")
    if len(parts) != 4 or parts[0] != "SWMTKN" or parts[1] != "1" or len(parts[2]) != 50 or len(parts[3]) != 25:
        raise TokenError(
            "invalid join token: expected SWMTKN-1-<50 characters>-<25 characters>; "
            "get one with `minisw join-token worker -q` on a manager"
        )
    return parts[2], parts[3]


@dataclass(frozen=True)
class CertInfo:
    node_id: str
    role: str  # MANAGER_OU | WORKER_OU
    cluster_id: str
    not_after: dt.datetime
    not_before: dt.datetime


def cert_info(cert_pem: bytes) -> CertInfo:
    cert = x509.load_pem_x509_certificate(cert_pem)

    def first(oid: x509.ObjectIdentifier) -> str:
        values = cert.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    return CertInfo(
        node_id=first(NameOID.COMMON_NAME),
        role=first(NameOID.ORGANIZATIONAL_UNIT_NAME),
        cluster_id=first(NameOID.ORGANIZATION_NAME),
        not_after=cert.not_valid_after_utc,
        not_before=cert.not_valid_before_utc,
    )


def new_key_and_csr() -> tuple[bytes, bytes]:
    """A fresh ECDSA P-256 key (PEM) and a certificate request for it; the manager sets the subject."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class TLSFiles:
    """A TLS directory: ca.pem, cert.pem, key.pem."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def key(self) -> Path:
        return self.directory / "key.pem"

    def exists(self) -> bool:
        return self.ca.exists() and self.cert.exists() and self.key.exists()

    def read(self) -> tuple[bytes, bytes, bytes]:
        return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()

    def write(self, ca: bytes, cert: bytes, key: bytes | None = None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for path, data, mode in ((self.ca, ca, 0o644), (self.cert, cert, 0o644), (self.key, key, 0o600)):
            if data is None:
                continue
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)


# Certificates name this host so that any manager address verifies; the client side overrides
# the target name to it (managers are found by address, and addresses change).
SERVER_NAME = "swarm-manager"
WORKER_SERVER_NAME = "swarm-worker"  # a worker's certificate names only this: it can never pass for a manager


def channel_credentials(ca: bytes, cert: bytes | None = None, key: bytes | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def channel_options() -> list[tuple[str, object]]:
    return [("grpc.ssl_target_name_override", SERVER_NAME), ("grpc.default_authority", SERVER_NAME)]


def fetch_root_ca(addr: str, expected_digest: str, timeout: float = 5.0) -> bytes:
    """The cluster's root certificate, from a manager's TLS handshake, checked against the token.

    The manager sends its certificate chain (its own, then the root). We accept the root only if
    its digest is the one the join token carries, and only if it really signed the manager's
    certificate: whoever answers cannot make us trust another CA.
    """
    host, _, port = addr.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # verified below, against the token's digest
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
            chain_der = _unverified_chain(tls)
    certs = [x509.load_der_x509_certificate(der) for der in chain_der]
    if len(certs) < 2:
        raise TokenError(f"the manager at {addr} did not present the cluster's root certificate")
    leaf, root = certs[0], certs[-1]
    root_pem = root.public_bytes(serialization.Encoding.PEM)
    if ca_digest(root_pem) != expected_digest:
        raise TokenError(
            f"the join token does not match the cluster at {addr}: its CA digest differs from the "
            "cluster's root certificate (a token from another cluster, or a manager that is not who it claims)"
        )
    try:
        leaf.verify_directly_issued_by(root)
    except (ValueError, TypeError, Exception) as err:
        raise TokenError(f"the manager at {addr} presented a certificate its root did not sign: {err}") from None
    return root_pem


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    chain = getattr(tls, "get_unverified_chain", None)  # public from Python 3.13
    if chain is None:
        chain = tls._sslobj.get_unverified_chain  # type: ignore[attr-defined]
    found = chain() or []
    return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in found]  # type: ignore[attr-defined]


WORKER_REFUSAL = (
    "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. "
    "Please run this command on a manager node or promote the current node to a manager."
)

# A test-only switch: MINISW_INSECURE=1 runs every listener and channel in plaintext, to measure
# what TLS costs. Nothing else may set it.
INSECURE_ENV = "MINISW_INSECURE"


def insecure() -> bool:
    return os.environ.get(INSECURE_ENV) == "1"


def join_addr(addr: str) -> str:
    """Where a manager serves joining nodes: its control port + 2 (Raft has + 1)."""
    host, _, port = addr.rpartition(":")
    return f"{host}:{int(port) + 2}"


def engine_api_addr(addr: str) -> str:
    """Where a manager serves the Docker Engine API unless told otherwise: its control port + 3."""
    host, _, port = addr.rpartition(":")
    return f"{host}:{int(port) + 3}"


def server_credentials(
    fetch: Callable[[], tuple[bytes, bytes, bytes]], require_client_cert: bool = True
) -> grpc.ServerCredentials:
    """TLS for a listener: its certificate chain (its own, then the root) and, unless it is the
    join port, a client certificate the root signed. ``fetch`` is asked again at handshakes, so a
    renewed certificate is served without a restart."""
    current: list[tuple[bytes, bytes, bytes]] = [fetch()]

    def config(ca: bytes, cert: bytes, key: bytes) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(key, cert + ca)], root_certificates=ca)

    def fetcher() -> grpc.ServerCertificateConfiguration | None:
        latest = fetch()
        if latest == current[0]:
            return None
        current[0] = latest
        return config(*latest)

    return grpc.dynamic_ssl_server_credentials(
        config(*current[0]), fetcher, require_client_authentication=require_client_cert
    )


def secure_channel(
    addr: str, files: TLSFiles | None, options: list[tuple[str, object]] | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to a manager, with this node's certificate (or none, to join)."""
    opts = list(options or [])
    if insecure():
        return grpc.aio.insecure_channel(addr, options=opts)
    if files is None:
        raise ValueError("a TLS directory is needed")
    ca, cert, key = files.read() if files.cert.exists() else (files.ca.read_bytes(), None, None)
    return grpc.aio.secure_channel(addr, channel_credentials(ca, cert, key), options=[*channel_options(), *opts])

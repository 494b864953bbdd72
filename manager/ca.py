"""The cluster CA (swarmkit ca/): a root key and certificate made at ``--init``, replicated to
managers through the store, signing node certificates from their requests.

Node certificates carry CN = node ID, OU = role (swarm-manager / swarm-worker), O = cluster ID;
managers' also name ``swarm-manager`` and ``swarm-ca`` so that clients verify any manager by
that name whatever its address. Certificates are back-dated an hour against clock skew.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from minisw.proto.pki import MANAGER_OU, SERVER_NAME, WORKER_SERVER_NAME, ca_digest

__all__ = ["DEFAULT_CERT_EXPIRY", "RootCA"]

DEFAULT_CERT_EXPIRY = dt.timedelta(days=90)
ROOT_VALIDITY = dt.timedelta(days=365 * 20)
BACKDATE = dt.timedelta(hours=1)


@dataclass(frozen=True)
class RootCA:
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def create(cls) -> RootCA:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swarm-ca")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + ROOT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )

    @property
    def digest(self) -> str:
        return ca_digest(self.cert_pem)

    def _cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def sign(
        self,
        csr_pem: bytes,
        node_id: str,
        role: str,
        cluster_id: str,
        expiry: dt.timedelta,
        addresses: Sequence[str] = (),
    ) -> bytes:
        """A node certificate for the key in ``csr_pem``; the subject is ours to set, not the node's.

        ``addresses`` (IPs or host names) are added to the names: clients that verify the host they
        dial, such as the docker CLI against a manager's Engine API, need them."""
        csr = x509.load_pem_x509_csr(csr_pem)
        if not csr.is_signature_valid:
            raise ValueError("the certificate request's signature is invalid")
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                x509.NameAttribute(NameOID.COMMON_NAME, node_id),
            ]
        )
        names: list[x509.GeneralName] = [x509.DNSName(node_id)]
        if role == MANAGER_OU:
            names += [x509.DNSName(SERVER_NAME), x509.DNSName("swarm-ca")]
        else:
            names += [x509.DNSName(WORKER_SERVER_NAME)]
        for address in addresses:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(address)))
            except ValueError:
                names.append(x509.DNSName(address))
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert().subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + expiry)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def issued(self, cert_pem: bytes, now: dt.datetime | None = None) -> bool:
        """Whether this CA signed ``cert_pem`` and it is valid now."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            cert.verify_directly_issued_by(self._cert())
        except (ValueError, TypeError, InvalidSignature):
            return False
        now = now or dt.datetime.now(dt.UTC)
        return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc

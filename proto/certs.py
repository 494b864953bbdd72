"""A node's certificate lifecycle, for managers and agents alike: get one with a join token,
renew it before it expires (at a random point between 50 % and 80 % of its life, as Swarm does).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Callable, Sequence

import grpc

from minisw.proto import ca_pb2 as capb
from minisw.proto import ca_pb2_grpc as capb_grpc
from minisw.proto.pki import (
    TLSFiles,
    TokenError,
    cert_info,
    fetch_root_ca,
    join_addr,
    new_key_and_csr,
    parse_token,
    secure_channel,
)

__all__ = ["JoinRefused", "obtain_certificate", "renew_forever", "renew_now", "renewal_delay"]

log = logging.getLogger(__name__)


class JoinRefused(Exception):
    """The cluster refused the token, or the token does not match the cluster: retrying cannot help."""


async def obtain_certificate(managers: Sequence[str], token: str, hostname: str, files: TLSFiles) -> str:
    """Join: trust the root only if the token names it, send a request, keep the key. Returns the node ID.

    Unreachable managers are retried (round robin, backing off); a refused or mismatched token
    raises JoinRefused at once.
    """
    try:
        digest, _ = parse_token(token)
    except TokenError as err:
        raise JoinRefused(str(err)) from None
    delay = 0.2
    turn = 0
    while True:
        addr = managers[turn % len(managers)]
        turn += 1
        try:
            root = await asyncio.to_thread(fetch_root_ca, join_addr(addr), digest)
            key, csr = new_key_and_csr()
            files.directory.mkdir(parents=True, exist_ok=True)
            files.ca.write_bytes(root)
            async with secure_channel(join_addr(addr), files) as channel:
                reply = await capb_grpc.NodeCAStub(channel).IssueNodeCertificate(
                    capb.IssueNodeCertificateRequest(token=token, csr=csr, hostname=hostname), timeout=10
                )
            files.write(reply.root_ca, reply.certificate, key)
            log.info("joined the cluster as node %s", reply.node_id)
            return str(reply.node_id)
        except TokenError as err:
            raise JoinRefused(str(err)) from None
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT):
                raise JoinRefused(err.details() or str(err.code())) from None
            log.warning("cannot join through %s yet (%s); retrying", addr, err.details())
        except OSError as err:
            log.warning("cannot reach %s yet (%s); retrying", addr, err)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def renewal_delay(cert_pem: bytes, now: dt.datetime | None = None) -> float:
    """Seconds until this certificate should be renewed: 50-80 % into its validity."""
    info = cert_info(cert_pem)
    now = now or dt.datetime.now(dt.UTC)
    life = (info.not_after - info.not_before).total_seconds()
    at = info.not_before + dt.timedelta(seconds=life * random.uniform(0.5, 0.8))
    return max(0.0, (at - now).total_seconds())


async def renew_now(managers: Callable[[], Sequence[str]], files: TLSFiles) -> None:
    """Get a fresh certificate (and key) for this node, trying the managers in turn until one answers."""
    for attempt in range(1000):
        addrs = list(managers())
        addr = addrs[attempt % len(addrs)]
        key, csr = new_key_and_csr()
        try:
            async with secure_channel(addr, files) as channel:
                reply = await capb_grpc.NodeCAStub(channel).RenewNodeCertificate(
                    capb.RenewNodeCertificateRequest(csr=csr), timeout=10
                )
            files.write(reply.root_ca, reply.certificate, key)
            log.info("renewed this node's certificate (valid until %s)", cert_info(reply.certificate).not_after)
            return
        except (grpc.aio.AioRpcError, OSError) as err:
            log.warning("certificate renewal through %s failed (%s); retrying", addr, err)
            await asyncio.sleep(min(1.0 * (attempt + 1), 10.0))


async def renew_forever(managers: Callable[[], Sequence[str]], files: TLSFiles, on_renewed: Callable[[], None]) -> None:
    """Keep the node's certificate fresh. The key is new every time; it never leaves the node."""
    while True:
        await asyncio.sleep(renewal_delay(files.cert.read_bytes()))
        await renew_now(managers, files)
        on_renewed()

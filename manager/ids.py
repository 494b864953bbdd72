"""Identifiers and join tokens in Swarm's shapes."""

from __future__ import annotations

import secrets

from minisw.proto.pki import to_base36

__all__ = ["generate_join_token", "new_id"]


def new_id() -> str:
    """25 lowercase base-36 characters from 17 random bytes, high bit set (swarmkit identity.NewID)."""
    raw = bytearray(secrets.token_bytes(17))
    raw[0] |= 0x80
    return to_base36(int.from_bytes(raw, "big"), 25)[-25:]


def generate_join_token(ca_digest: str) -> str:
    """``SWMTKN-1-<the root CA's digest: 50 base-36 chars>-<25-char base-36 secret>``."""
    secret = to_base36(int.from_bytes(secrets.token_bytes(16), "big"), 25)
    return f"SWMTKN-1-{ca_digest}-{secret}"

"""Identifiers and join tokens in Swarm's shapes."""

from __future__ import annotations

import secrets

__all__ = ["generate_join_token", "new_id", "parse_join_token", "to_base36"]

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def to_base36(value: int, width: int) -> str:
    digits = []
    while value:
        value, rem = divmod(value, 36)
        digits.append(_ALPHABET[rem])
    return "".join(reversed(digits)).rjust(width, "0")


def new_id() -> str:
    """25 lowercase base-36 characters from 17 random bytes, high bit set (swarmkit identity.NewID)."""
    raw = bytearray(secrets.token_bytes(17))
    raw[0] |= 0x80
    return to_base36(int.from_bytes(raw, "big"), 25)[-25:]


def generate_join_token(ca_digest: str) -> str:
    """``SWMTKN-1-<the root CA's digest: 50 base-36 chars>-<25-char base-36 secret>``."""
    digest = ca_digest
    secret = to_base36(int.from_bytes(secrets.token_bytes(16), "big"), 25)
    return f"SWMTKN-1-{digest}-{secret}"


def parse_join_token(token: str) -> tuple[str, str] | None:
    """Return (digest, secret) of a well-formed token, else None."""
    parts = token.split("-")
    if len(parts) != 4 or parts[0] != "SWMTKN" or parts[1] != "1":
        return None
    if len(parts[2]) != 50 or len(parts[3]) != 25:
        return None
    return parts[2], parts[3]

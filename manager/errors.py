"""Errors raised inside the manager; servicers translate them to gRPC codes at the edge."""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "InvalidArgument",
    "ManagerError",
    "NameConflict",
    "NoQuorum",
    "NotFound",
    "SequenceConflict",
]


class ManagerError(Exception):
    """Base of every error the manager raises on purpose."""


class NotFound(ManagerError):
    """The object does not exist."""


class AlreadyExists(ManagerError):
    """An object with that ID exists already."""


class NameConflict(ManagerError):
    """Another object already uses that name."""


class SequenceConflict(ManagerError):
    """The caller's version is stale: Swarm's "update out of sequence"."""

    def __init__(self) -> None:
        super().__init__("update out of sequence")


class InvalidArgument(ManagerError):
    """The request is malformed or breaks one of Swarm's rules."""


class FailedPrecondition(ManagerError):
    """The request is valid but the cluster's state does not allow it now."""


class NoQuorum(ManagerError):
    """Raft cannot commit: too few managers are reachable, or there is no leader."""

"""Swarm's placement constraints matched against a node (swarmkit manager/constraint).

Pure, so that the scheduler, the orchestrators, the constraint enforcer and the dirty-task rule
all read a constraint the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from minisw.proto import objects_pb2 as pb

__all__ = ["constraint_matches", "node_matches"]

_CONSTRAINT = re.compile(r"^\s*([^=!]+?)\s*(==|!=)\s*(.*?)\s*$")


def _attribute(node: pb.Node, key: str) -> str | None:
    k = key.lower()
    if k == "node.id":
        return node.id
    if k == "node.hostname":
        return node.description.hostname
    if k == "node.role":
        return "manager" if node.role == pb.MANAGER else "worker"
    if k == "node.platform.os":
        return node.description.platform.os
    if k == "node.platform.arch":
        return node.description.platform.architecture
    if k.startswith("node.labels."):
        return node.spec.annotations.labels.get(key[len("node.labels.") :], "")
    if k.startswith("engine.labels."):
        return node.description.engine.labels.get(key[len("engine.labels.") :], "")
    return None


def constraint_matches(expr: str, node: pb.Node) -> bool:
    """Swarm's matching: exact, case-insensitive; a missing label is ""; unknown keys never match."""
    m = _CONSTRAINT.match(expr)
    if not m:
        return False
    key, op, value = m.groups()
    actual = _attribute(node, key)
    if actual is None:
        return False
    equal = actual.lower() == value.lower()
    return equal if op == "==" else not equal


def node_matches(constraints: Iterable[str], node: pb.Node) -> bool:
    """Whether ``node`` satisfies every constraint (they are ANDed)."""
    return all(constraint_matches(c, node) for c in constraints)

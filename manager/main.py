"""Assembles a ManagerNode with its leader-only components; the one place that knows them all."""

from __future__ import annotations

from minisw.manager.node import ManagerConfig, ManagerNode

__all__ = ["build_manager"]


def build_manager(config: ManagerConfig) -> ManagerNode:
    return ManagerNode(config)

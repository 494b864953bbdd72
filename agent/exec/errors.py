"""Executor errors: what went wrong with a container, in words a user can act on."""

from __future__ import annotations

__all__ = ["ContainerGone", "ExecError", "Unhealthy"]


class ExecError(Exception):
    """A failure of the runtime; before STARTING it rejects the task, after it fails it."""

    def __init__(self, message: str, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class ContainerGone(ExecError):
    """The task's container no longer exists."""


class Unhealthy(ExecError):
    """The container's healthcheck reported it unhealthy."""

    def __init__(self) -> None:
        super().__init__("dockerexec: unhealthy container")

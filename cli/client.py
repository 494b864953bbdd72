"""Finding the manager and talking to it; the one place gRPC errors become click errors."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import grpc

from minisw.proto import control_pb2_grpc as api_grpc

__all__ = ["CONTEXT_FILE", "Client", "DaemonError", "PlainError", "resolve_host", "save_context"]

CONTEXT_FILE = Path(os.environ.get("MINISW_CONFIG", str(Path.home() / ".minisw"))) / "context.json"
CALL_TIMEOUT = 30.0


class DaemonError(click.ClickException):
    """An error the manager answered with, printed the way docker prints daemon errors."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code

    def format_message(self) -> str:
        return f"Error response from daemon: {self.message}"

    def show(self, file: Any = None) -> None:
        click.echo(self.format_message(), err=True)


class PlainError(click.ClickException):
    """Errors already worded as docker words them (several daemon errors, one per line)."""

    def show(self, file: Any = None) -> None:
        click.echo(self.format_message(), err=True)


def save_context(host: str, directory: str) -> None:
    CONTEXT_FILE.parent.mkdir(parents=True, exist_ok=True)
    CONTEXT_FILE.write_text(json.dumps({"host": host, "dir": directory}))


def resolve_host(flag: str | None) -> str:
    """``--host``, then ``MINISW_HOST``, then the context that ``minisw dev up`` saved."""
    if flag:
        return flag
    env = os.environ.get("MINISW_HOST")
    if env:
        return env
    if CONTEXT_FILE.exists():
        try:
            return str(json.loads(CONTEXT_FILE.read_text())["host"])
        except (ValueError, KeyError):
            pass
    raise click.ClickException(
        "no manager to talk to: pass --host HOST:PORT, set MINISW_HOST, or start a local cluster with `minisw dev up`"
    )


class Client:
    """A Control API stub that turns transport failures into readable errors."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._channel = grpc.insecure_channel(host)
        self.stub = api_grpc.ControlStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def call(self, method: str, request: Any, timeout: float = CALL_TIMEOUT) -> Any:
        with translate_errors(self.host):
            return getattr(self.stub, method)(request, timeout=timeout)


@contextmanager
def translate_errors(host: str) -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as err:
        code = err.code()
        details = err.details() or str(code)
        if code == grpc.StatusCode.UNAVAILABLE and (
            "failed to connect" in details.lower() or "connection refused" in details.lower()
        ):
            raise click.ClickException(
                f"Cannot connect to the minisw manager at {host}. Is the manager running? "
                "(check the address, or `minisw dev status`)"
            ) from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise click.ClickException(
                f"the manager at {host} did not answer in time; the cluster may have lost quorum (see `minisw info`)"
            ) from None
        raise DaemonError(details, code) from None

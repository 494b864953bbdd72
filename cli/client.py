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
from minisw.proto.pki import SERVER_NAME, WORKER_SERVER_NAME, TLSFiles, channel_credentials, insecure

__all__ = ["CONTEXT_FILE", "Client", "DaemonError", "PlainError", "resolve_host", "resolve_tls_dir", "save_context"]

CONTEXT_FILE = Path(os.environ.get("MINISW_CONFIG", str(Path.home() / ".minisw"))) / "context.json"
CALL_TIMEOUT = 30.0
_NO_CONNECTION = ("failed to connect", "connection refused", "dns resolution failed")


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


def save_context(host: str, directory: str, tls_dir: str = "") -> None:
    CONTEXT_FILE.parent.mkdir(parents=True, exist_ok=True)
    CONTEXT_FILE.write_text(json.dumps({"host": host, "dir": directory, "tls_dir": tls_dir}))


def _context(key: str) -> str:
    if CONTEXT_FILE.exists():
        try:
            return str(json.loads(CONTEXT_FILE.read_text()).get(key, ""))
        except ValueError:
            pass
    return ""


def resolve_host(flag: str | None) -> str:
    """``--host``, then ``MINISW_HOST``, then the context that ``minisw dev up`` saved."""
    found = flag or os.environ.get("MINISW_HOST") or _context("host")
    if found:
        return found
    raise click.ClickException(
        "no manager to talk to: pass --host HOST:PORT, set MINISW_HOST, or start a local cluster with `minisw dev up`"
    )


def resolve_tls_dir(flag: str | None) -> str:
    """``--tls-dir``, then ``MINISW_TLS_DIR`` (like DOCKER_CERT_PATH), then the saved context."""
    found = flag or os.environ.get("MINISW_TLS_DIR") or _context("tls_dir")
    if found or insecure():
        return found
    raise click.ClickException(
        "no client certificate: pass --tls-dir DIR or set MINISW_TLS_DIR to a folder with ca.pem, cert.pem "
        "and key.pem (`minisw dev up` saves one for its cluster)"
    )


class Client:
    """A Control API stub that turns transport failures into readable errors."""

    def __init__(self, host: str, tls_dir: str = "") -> None:
        self.host = host
        self._tls = TLSFiles(Path(tls_dir)) if tls_dir and not insecure() else None
        self._channel = self._open(SERVER_NAME)
        self.stub = api_grpc.ControlStub(self._channel)

    def _open(self, server_name: str) -> grpc.Channel:
        if self._tls is None:
            return grpc.insecure_channel(self.host)
        if not self._tls.exists():
            raise click.ClickException(f"{self._tls.directory} must hold ca.pem, cert.pem and key.pem")
        ca, cert, key = self._tls.read()
        options = [("grpc.ssl_target_name_override", server_name), ("grpc.default_authority", server_name)]
        return grpc.secure_channel(self.host, channel_credentials(ca, cert, key), options=options)

    def close(self) -> None:
        self._channel.close()

    def call(self, method: str, request: Any, timeout: float = CALL_TIMEOUT) -> Any:
        try:
            with translate_errors(self.host):
                return getattr(self.stub, method)(request, timeout=timeout)
        except DaemonError:
            raise  # the peer answered: it is what we thought it was
        except click.ClickException:
            # No answer at all, as when a worker's certificate fails a manager's name check.
            if self._tls is None or isinstance(self.stub, _WorkerStub) or not self._maybe_worker():
                raise
        # A certificate of this cluster's CA names the peer a worker: what it answers is Swarm's refusal.
        with translate_errors(self.host):
            return getattr(self.stub, method)(request, timeout=timeout)

    def _maybe_worker(self) -> bool:
        """After a failed handshake under a manager's name: is this a worker of our cluster?"""
        probe = self._open(WORKER_SERVER_NAME)
        try:
            grpc.channel_ready_future(probe).result(timeout=3)
        except grpc.FutureTimeoutError:
            probe.close()
            return False
        self._channel.close()
        self._channel = probe
        self.stub = _WorkerStub(probe)
        return True


class _WorkerStub(api_grpc.ControlStub):
    """The same stub, marking that we already fell back to a worker's name."""


@contextmanager
def translate_errors(host: str) -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as err:
        code = err.code()
        details = err.details() or str(code)
        # Only gRPC's own words for this client's connection: a manager's answer may quote a
        # failure of its own (a follower that could not reach a dead leader is running).
        if code == grpc.StatusCode.UNAVAILABLE and details.lower().startswith(_NO_CONNECTION):
            raise click.ClickException(
                f"Cannot connect to the minisw manager at {host}. Is the manager running? "
                "(check the address, or `minisw dev status`)"
            ) from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise click.ClickException(
                f"the manager at {host} did not answer in time; the cluster may have lost quorum (see `minisw info`)"
            ) from None
        raise DaemonError(details, code) from None

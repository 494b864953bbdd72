"""Promotion: when the cluster makes this worker a manager, its agent starts the manager.

Swarm runs both in one daemon; minisw runs them as two processes, so the agent does what the
daemon would: it renews its certificate (the CA now signs it for the manager role), gives the
manager a copy in its own data directory, and starts ``minisw manager --join`` there. The manager
joins Raft with that certificate; the node's role becomes MANAGER once it is a member. A restarted
agent restarts the manager it had started.

A demotion undoes all of it: the manager stops by itself once it learns its node's new role (we
stop it if it does not), its data directory goes (its Raft state belongs to a membership it has
left: a later promotion joins afresh), the certificate is renewed for the worker role, and the
agent answers the control port with the worker's refusal again. Only then may a new promotion
start a manager; one that came meanwhile is acted on at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from minisw.proto import objects_pb2 as pb
from minisw.proto.certs import renew_now
from minisw.proto.pki import TLSFiles

__all__ = ["Promotion"]

log = logging.getLogger(__name__)

STOP_WAIT = 15.0  # a demoted manager stops by itself within a few seconds; after this we stop it


class Promotion:
    def __init__(
        self,
        data_dir: str,
        tls: TLSFiles,
        hostname: str,
        listen: str,
        before_start: Callable[[], Awaitable[None]],
        after_stop: Callable[[], Awaitable[None]],
    ) -> None:
        self._dir = Path(data_dir, "manager")
        self._tls = tls
        self._hostname = hostname
        self._listen = listen
        self._before_start = before_start  # frees the control port the manager will take
        self._after_stop = after_stop  # answers the control port as a worker again
        self._child: subprocess.Popen[bytes] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._wanted: tuple[int, Callable[[], Sequence[str]]] | None = None  # the last role the cluster asked for

    def _had_manager(self) -> bool:
        return Path(self._dir, "manager.json").exists()

    def _install_certificate(self) -> None:
        """The manager's own copy of the node's (now manager-role) credentials."""
        own = TLSFiles(self._dir / "tls")
        own.directory.mkdir(parents=True, exist_ok=True)
        for src, dst in ((self._tls.ca, own.ca), (self._tls.cert, own.cert), (self._tls.key, own.key)):
            shutil.copyfile(src, dst)
        own.key.chmod(0o600)

    @property
    def started(self) -> bool:
        return self._child is not None or (self._starting is not None and not self._starting.done())

    @property
    def stopping(self) -> bool:
        return self._stopping is not None and not self._stopping.done()

    async def resume(self, managers: Sequence[str]) -> None:
        """After an agent restart: bring back the manager this agent had started."""
        if self._had_manager() and not self.started:
            await self._before_start()
            self._spawn(managers)

    def desired(self, role: int, managers: Callable[[], Sequence[str]]) -> None:
        self._wanted = (role, managers)
        if self.stopping:
            return  # acted on once the demotion is complete
        if role == pb.MANAGER and not self.started:
            log.info("this node was promoted: starting its manager")
            self._starting = asyncio.create_task(self._start(managers))
        elif role == pb.WORKER and (self.started or self._had_manager()):
            log.info("this node was demoted: its manager stops")
            self._stopping = asyncio.create_task(self._stop(managers))
            self._stopping.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("stepping down from manager failed: %r", task.exception())
        self._stopping = None
        if self._wanted is not None and self._wanted[0] == pb.MANAGER and not task.cancelled():
            self.desired(*self._wanted)  # promoted again while it stepped down

    async def _stop(self, managers: Callable[[], Sequence[str]]) -> None:
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
            self._starting = None
        child, self._child = self._child, None
        if child is not None:
            try:
                await asyncio.to_thread(child.wait, STOP_WAIT)
            except subprocess.TimeoutExpired:
                log.warning("the demoted manager did not stop by itself: stopping it")
                await _terminate(child)
        await asyncio.to_thread(shutil.rmtree, self._dir, True)
        await renew_now(managers, self._tls)  # a worker's certificate: no manager rights are left
        await self._after_stop()

    async def _start(self, managers: Callable[[], Sequence[str]]) -> None:
        await renew_now(managers, self._tls)  # a certificate for the manager role
        self._install_certificate()
        await self._before_start()
        self._spawn(managers())

    def _spawn(self, managers: Sequence[str]) -> None:
        log_file = open(str(self._dir) + ".log", "ab")
        self._child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "minisw.cli",
                "manager",
                "--data-dir",
                str(self._dir),
                "--listen",
                self._listen,
                "--join",
                managers[0],
                "--hostname",
                self._hostname,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
        log_file.close()

    async def close(self) -> None:
        for task in (self._starting, self._stopping):
            if task is not None:
                task.cancel()
        if self._child is not None:
            await _terminate(self._child)


async def _terminate(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            await asyncio.to_thread(child.wait, 15)
        except subprocess.TimeoutExpired:
            child.kill()

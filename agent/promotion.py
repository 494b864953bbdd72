"""Promotion: when the cluster makes this worker a manager, its agent starts the manager.

Swarm runs both in one daemon; minisw runs them as two processes, so the agent does what the
daemon would: it renews its certificate (the CA now signs it for the manager role), gives the
manager a copy in its own data directory, and starts ``minisw manager --join`` there. The manager
joins Raft with that certificate; the node's role becomes MANAGER once it is a member. A restarted
agent restarts the manager it had started.
"""

from __future__ import annotations

import asyncio
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


class Promotion:
    def __init__(
        self,
        data_dir: str,
        tls: TLSFiles,
        hostname: str,
        listen: str,
        before_start: Callable[[], Awaitable[None]],
    ) -> None:
        self._dir = Path(data_dir, "manager")
        self._tls = tls
        self._hostname = hostname
        self._listen = listen
        self._before_start = before_start  # frees the control port the manager will take
        self._child: subprocess.Popen[bytes] | None = None
        self._starting: asyncio.Task[None] | None = None

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

    async def resume(self, managers: Sequence[str]) -> None:
        """After an agent restart: bring back the manager this agent had started."""
        if self._had_manager() and not self.started:
            await self._before_start()
            self._spawn(managers)

    def desired(self, role: int, managers: Callable[[], Sequence[str]]) -> None:
        if role == pb.MANAGER and not self.started:
            log.info("this node was promoted: starting its manager")
            self._starting = asyncio.create_task(self._start(managers))

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
        if self._starting is not None:
            self._starting.cancel()
        if self._child is not None and self._child.poll() is None:
            self._child.terminate()
            try:
                await asyncio.to_thread(self._child.wait, 15)
            except subprocess.TimeoutExpired:
                self._child.kill()

"""A Docker daemon of the benchmark's own, for comparisons that need a daemon setting (such as
``DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1``) without touching the machine's daemon.

It runs in a network namespace of its own (so its bridge and iptables rules cannot meet the
machine's), with the machine's ``/etc/docker/daemon.json`` minus ``data-root`` (same storage
driver; ``data-root`` would clash with ``--data-root``), its own data root, exec root, socket and
pidfile. Images come in with ``docker save | docker load`` (there is no registry). Everything it
made is stopped and removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PrivateDockerd", "private_dockerd"]

MACHINE_CONFIG = Path("/etc/docker/daemon.json")


@dataclass(frozen=True)
class PrivateDockerd:
    host: str  # for ``docker -H`` and ``docker.DockerClient(base_url=...)``
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _config() -> dict[str, object]:
    config = json.loads(MACHINE_CONFIG.read_text()) if MACHINE_CONFIG.exists() else {}
    config.pop("data-root", None)
    return dict(config)


def _unmount_under(root: Path) -> None:
    """Mounts a daemon killed mid-way left under its data root, deepest first."""
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(str(root))]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


@contextlib.contextmanager
def private_dockerd(name: str, images: list[str], env: dict[str, str] | None = None) -> Iterator[PrivateDockerd]:
    tag = f"msb-{name}-{os.getpid()}"
    root = Path(tempfile.mkdtemp(prefix=f"{tag}-"))
    exec_root = Path("/run", tag)  # short: containerd's socket path lives under it
    netns = tag
    (root / "daemon.json").write_text(json.dumps(_config()))
    daemon = PrivateDockerd(host=f"unix://{root / 'docker.sock'}", log_path=root / "dockerd.log")
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        with open(daemon.log_path, "ab") as log:
            # nsenter --net, not ip netns exec: the latter remounts /sys and dockerd loses its cgroups.
            proc = subprocess.Popen(
                [
                    "nsenter",
                    f"--net=/var/run/netns/{netns}",
                    "dockerd",
                    "--config-file",
                    str(root / "daemon.json"),
                    "--data-root",
                    str(root / "data"),
                    "--exec-root",
                    str(exec_root),
                    "-H",
                    daemon.host,
                    "--pidfile",
                    str(root / "docker.pid"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, **(env or {})},
            )
        deadline = time.monotonic() + 30
        while subprocess.run(["docker", "-H", daemon.host, "info"], capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the private dockerd did not start; its log:\n{daemon.log()[-2000:]}")
            time.sleep(0.2)
        for image in images:
            save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
            subprocess.run(
                ["docker", "-H", daemon.host, "load", "-q"], stdin=save.stdout, check=True, capture_output=True
            )
            if save.wait() != 0:
                raise RuntimeError(f"docker save {image} failed")
        yield daemon
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        _unmount_under(root)
        _unmount_under(exec_root)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        shutil.rmtree(exec_root, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)

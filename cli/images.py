"""The demo and test images, built locally: there is no registry to pull from.

``minisw/web:1`` and ``minisw/web:2`` are Debian's static busybox plus a small init script that
serves ``<image version> <container hostname>`` over HTTP on port 80 and the same over UDP on port
80 (``imagesrc/udpecho.c``, compiled static when the images are built: busybox has no UDP server
that answers), and exits at once on SIGTERM (busybox as PID 1 would ignore it and make every stop
wait out the grace period). The label ``org.minisw.test-image`` carries the recipe's version, so
that images built from an older recipe are built again.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["IMAGES", "build_images", "missing_images"]

IMAGES = ("minisw/web:1", "minisw/web:2")
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")
APPLETS = (
    "sh",
    "httpd",
    "hostname",
    "sleep",
    "cat",
    "echo",
    "wget",
    "kill",
    "ls",
    "true",
    "false",
    "env",
    "ps",
    "nslookup",
    "timeout",
    "nc",
    "seq",
)
RECIPE = "2"  # bump when the image's content changes
UDPECHO_SOURCE = Path(__file__).resolve().parent / "imagesrc" / "udpecho.c"

INIT = """#!/bin/sh
# Serve "<version> <hostname>" on :80; exit promptly on SIGTERM.
mkdir -p /www
echo "{version} $(hostname)" > /www/index.html
httpd -f -p 80 -h /www &
child=$!
/bin/udpecho 80 /www/index.html &
trap 'kill -TERM $child 2>/dev/null; exit 0' TERM INT
wait $child
"""

DOCKERFILE = """FROM scratch
ADD rootfs.tar /
LABEL org.minisw.test-image={recipe}
CMD ["/init"]
"""


def _busybox() -> bytes:
    found = next((p for p in BUSYBOX_PATHS if os.path.exists(p)), None) or shutil.which("busybox")
    if found is None:
        raise RuntimeError("busybox is not installed: run `apt-get install busybox-static`")
    with open(found, "rb") as f:
        data = f.read()
    # An image FROM scratch has no dynamic loader: Debian's `busybox` package (which other
    # packages pull in, replacing `busybox-static`) would give containers that cannot start.
    if b"ld-linux" in data[:4096]:
        raise RuntimeError(f"{found} is dynamically linked: run `apt-get install busybox-static`")
    return data


def _udpecho() -> bytes:
    """The UDP answerer, compiled static (the image has no C library)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("a C compiler is needed to build the test images: run `apt-get install gcc libc6-dev`")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "udpecho")
        subprocess.run([cc, "-static", "-Os", "-o", str(out), str(UDPECHO_SOURCE)], check=True)
        return out.read_bytes()


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _context(version: str) -> bytes:
    rootfs = io.BytesIO()
    with tarfile.open(fileobj=rootfs, mode="w") as tar:
        for d in ("bin", "tmp", "www", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        _add(tar, "bin/busybox", _busybox())
        _add(tar, "bin/udpecho", _udpecho())
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        _add(tar, "init", INIT.format(version=version).encode())
        _add(tar, "etc/passwd", b"root:x:0:0:root:/:/bin/sh\n", 0o644)
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        _add(tar, "Dockerfile", DOCKERFILE.format(recipe=RECIPE).encode(), 0o644)
        _add(tar, "rootfs.tar", rootfs.getvalue(), 0o644)
    return context.getvalue()


def missing_images(client: Any) -> list[str]:
    import docker.errors

    missing = []
    for ref in IMAGES:
        try:
            image = client.images.get(ref)
        except docker.errors.ImageNotFound:
            missing.append(ref)
            continue
        if (image.labels or {}).get("org.minisw.test-image") != RECIPE:
            missing.append(ref)  # an older recipe
    return missing


def build_images(client: Any, only_missing: bool = True) -> list[str]:
    """Build the images (the missing ones by default); return the references built."""
    wanted = missing_images(client) if only_missing else list(IMAGES)
    for ref in wanted:
        version = ref  # the page says which image served it, e.g. "minisw/web:2 <hostname>"
        client.images.build(fileobj=io.BytesIO(_context(version)), custom_context=True, tag=ref, rm=True)
    return wanted

#!/usr/bin/env bash
# Install what minisw needs on a fresh Debian machine with Python 3.11 and a running Docker
# Engine: busybox-static and a C compiler with a static C library (the test images are built from
# busybox plus a small UDP answerer), iproute2 and util-linux (separate hosts: namespaces, veths,
# nsenter), nftables and iptables (kernel networking, fault rules), and the package itself with its
# development tools. Then build the test images. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

static_busybox() {  # Debian's `busybox` package replaces busybox-static with a dynamic binary
    [ -x /bin/busybox ] && ! head -c 4096 /bin/busybox | grep -q ld-linux
}
if ! static_busybox || ! command -v ip >/dev/null || ! command -v nsenter >/dev/null || ! command -v nft >/dev/null \
    || ! command -v iptables >/dev/null || ! command -v cc >/dev/null || [ ! -e /usr/lib/x86_64-linux-gnu/libc.a ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends busybox-static iproute2 util-linux nftables iptables gcc libc6-dev >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "Running pip as the 'root' user" || true
python3 -c "import minisw.cli.main" >/dev/null
docker info >/dev/null 2>&1 || { echo "the Docker daemon is not running (docker info failed)" >&2; exit 1; }
python3 - <<'PY'
import docker
from minisw.cli.images import build_images
client = docker.from_env()
built = build_images(client)
try:  # images built earlier from a dynamic busybox cannot start: build them again
    client.containers.run("minisw/web:1", "true", remove=True)
except docker.errors.DockerException:
    built = build_images(client, only_missing=False)
print("test images:", ", ".join(built) if built else "present")
PY

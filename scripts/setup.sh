#!/usr/bin/env bash
# Install what minisw needs on a fresh Debian machine with Python 3.11 and a running Docker
# Engine: busybox-static (the test images are built from it), iproute2, and the package itself
# with its development tools. Then build the test images. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v busybox >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq busybox-static iproute2 >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "Running pip as the 'root' user" || true
python3 -c "import minisw.cli.main" >/dev/null
docker info >/dev/null 2>&1 || { echo "the Docker daemon is not running (docker info failed)" >&2; exit 1; }
python3 - <<'PY'
import docker
from minisw.cli.images import build_images
built = build_images(docker.from_env())
print("test images:", ", ".join(built) if built else "present")
PY

#!/usr/bin/env bash
# Provision one VM: ROLE (manager|worker), NAME, its IP, the first manager's IP.
# manager1 starts the cluster and writes the join tokens and an operator certificate to
# /minisw/vagrant/.cluster/ (the synced folder); the others join with them.
# The processes run under systemd from minisw-manager.service / minisw-agent.service, which call
# minisw-node.sh: the same script `minisw dev up --hosts` runs inside each separate host.
set -euo pipefail
role=$1 name=$2 ip=$3 first=$4
shared=/minisw/vagrant/.cluster
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq docker.io python3 python3-pip python3-venv busybox-static iproute2 >/dev/null
python3 -m venv /opt/minisw
/opt/minisw/bin/pip install -q /minisw
ln -sf /opt/minisw/bin/minisw /usr/local/bin/minisw
/opt/minisw/bin/python - <<'PY'
import docker
from minisw.cli.images import build_images
build_images(docker.from_env())
PY

start() {  # role (manager|agent), then the settings for minisw-node.sh as NAME=value words
    local unit=$1
    shift
    mkdir -p /etc/minisw
    printf '%s\n' "$@" > "/etc/minisw/$unit.env"
    install -m 0644 "/minisw/vagrant/minisw-$unit.service" "/etc/systemd/system/minisw-$unit.service"
    systemctl daemon-reload
    systemctl enable --now "minisw-$unit"
}

wait_for() { for _ in $(seq 120); do [ -e "$1" ] && return 0; sleep 1; done; echo "timed out waiting for $1" >&2; exit 1; }

common=(MINISW_NAME="$name" MINISW_ADDR="$ip")
if [ "$role" = manager ] && [ "$name" = manager1 ]; then
    start manager "${common[@]}" MINISW_DATA_DIR=/var/lib/minisw MINISW_INIT=1
    wait_for /var/lib/minisw/operator-tls/key.pem
    mkdir -p "$shared"
    cp -r /var/lib/minisw/operator-tls "$shared/"
    export MINISW_TLS_DIR=$shared/operator-tls MINISW_HOST=$ip:4242
    for _ in $(seq 60); do minisw join-token worker -q > "$shared/worker.token" 2>/dev/null && break; sleep 1; done
    minisw join-token manager -q > "$shared/manager.token"
    start agent "${common[@]}" MINISW_DATA_DIR=/var/lib/minisw MINISW_JOIN="$ip:4242" \
        MINISW_TOKEN="$(cat "$shared/manager.token")"
elif [ "$role" = manager ]; then
    wait_for "$shared/manager.token"
    token=$(cat "$shared/manager.token")
    start manager "${common[@]}" MINISW_DATA_DIR=/var/lib/minisw MINISW_JOIN="$first:4242" MINISW_TOKEN="$token"
    wait_for /var/lib/minisw/tls/key.pem
    start agent "${common[@]}" MINISW_DATA_DIR=/var/lib/minisw MINISW_JOIN="$first:4242" MINISW_TOKEN="$token"
else
    wait_for "$shared/worker.token"
    start agent "${common[@]}" MINISW_DATA_DIR=/var/lib/minisw-agent MINISW_JOIN="$first:4242" \
        MINISW_TOKEN="$(cat "$shared/worker.token")" MINISW_REFUSAL=1
fi
mkdir -p /root/.minisw
echo "{\"host\": \"$first:4242\", \"tls_dir\": \"$shared/operator-tls\"}" > /root/.minisw/context.json

#!/usr/bin/env bash
# Provision one VM: ROLE (manager|worker), NAME, its IP, the first manager's IP.
# manager1 starts the cluster and writes the join tokens and an operator certificate to
# /minisw/vagrant/.cluster/ (the synced folder); the others join with them.
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

unit() {  # name, command line
    cat > "/etc/systemd/system/$1.service" <<UNIT
[Unit]
Description=$1
After=docker.service network-online.target
[Service]
ExecStart=$2
Restart=on-failure
[Install]
WantedBy=multi-user.target
UNIT
    systemctl daemon-reload
    systemctl enable --now "$1"
}

wait_for() { for _ in $(seq 120); do [ -e "$1" ] && return 0; sleep 1; done; echo "timed out waiting for $1" >&2; exit 1; }

if [ "$role" = manager ] && [ "$name" = manager1 ]; then
    unit minisw-manager "/usr/local/bin/minisw manager --data-dir /var/lib/minisw --listen $ip:4242 --hostname $name --init"
    wait_for /var/lib/minisw/operator-tls/key.pem
    mkdir -p "$shared"
    cp -r /var/lib/minisw/operator-tls "$shared/"
    export MINISW_TLS_DIR=$shared/operator-tls MINISW_HOST=$ip:4242
    for _ in $(seq 60); do minisw join-token worker -q > "$shared/worker.token" 2>/dev/null && break; sleep 1; done
    minisw join-token manager -q > "$shared/manager.token"
    unit minisw-agent "/usr/local/bin/minisw agent --data-dir /var/lib/minisw --join $ip:4242 --token $(cat "$shared/manager.token") --hostname $name --advertise $ip"
elif [ "$role" = manager ]; then
    wait_for "$shared/manager.token"
    unit minisw-manager "/usr/local/bin/minisw manager --data-dir /var/lib/minisw --listen $ip:4242 --hostname $name --join $first:4242 --token $(cat "$shared/manager.token")"
    wait_for /var/lib/minisw/tls/key.pem
    unit minisw-agent "/usr/local/bin/minisw agent --data-dir /var/lib/minisw --join $first:4242 --token $(cat "$shared/manager.token") --hostname $name --advertise $ip"
else
    wait_for "$shared/worker.token"
    unit minisw-agent "/usr/local/bin/minisw agent --data-dir /var/lib/minisw-agent --join $first:4242 --token $(cat "$shared/worker.token") --hostname $name --advertise $ip --control-listen $ip:4242"
fi
mkdir -p /root/.minisw
echo "{\"host\": \"$first:4242\", \"tls_dir\": \"$shared/operator-tls\"}" > /root/.minisw/context.json

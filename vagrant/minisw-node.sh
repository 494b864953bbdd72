#!/usr/bin/env bash
# Start one minisw process of a node in the foreground: `minisw-node.sh manager` or
# `minisw-node.sh agent`. Its two callers: the systemd units that `vagrant/provision.sh`
# installs on a VM (settings from /etc/minisw/ROLE.env), and `minisw dev up --hosts`, which runs
# it inside each separate host's network namespace (settings in the environment). So every CI run
# that starts separate hosts proves the commands a VM runs.
#
# Settings:
#   MINISW_DATA_DIR   where this process keeps its state (required)
#   MINISW_NAME       the node's name (required)
#   MINISW_ADDR       the node's address (required)
#   MINISW_PORT       the control API port (default 4242)
#   MINISW_INIT=1     manager only: start a new cluster
#   MINISW_JOIN       manager: the address of a manager to join; agent: every manager, comma separated
#   MINISW_TOKEN      the join token (the manager's for a manager node's agent)
#   MINISW_LABELS     agent only: node labels, "key=value key2=value2"
#   MINISW_DOCKER_HOST  agent only: the node's Docker daemon (default: the local socket)
#   MINISW_REFUSAL=1  agent only: answer the control port with Swarm's worker refusal
#   MINISW_NETWORKING agent only: kernel (default: overlay networks, VIPs, ingress in nftables) or relay
#   MINISW            how to run minisw (default "minisw"; dev uses "python3 -m minisw.cli")
set -euo pipefail

role=${1:?usage: minisw-node.sh manager|agent}
: "${MINISW_DATA_DIR:?MINISW_DATA_DIR is not set}" "${MINISW_NAME:?MINISW_NAME is not set}"
: "${MINISW_ADDR:?MINISW_ADDR is not set}"
port=${MINISW_PORT:-4242}
read -r -a minisw <<< "${MINISW:-minisw}"

case $role in
manager)
    args=(manager --data-dir "$MINISW_DATA_DIR" --listen "$MINISW_ADDR:$port" --hostname "$MINISW_NAME")
    if [ "${MINISW_INIT:-0}" = 1 ]; then
        args+=(--init)
    elif [ -n "${MINISW_JOIN:-}" ]; then
        args+=(--join "$MINISW_JOIN" --token "${MINISW_TOKEN:?MINISW_TOKEN is not set}")
    fi
    ;;
agent)
    args=(agent --data-dir "$MINISW_DATA_DIR" --hostname "$MINISW_NAME" --advertise "$MINISW_ADDR"
        --join "${MINISW_JOIN:?MINISW_JOIN is not set}" --token "${MINISW_TOKEN:?MINISW_TOKEN is not set}")
    for label in ${MINISW_LABELS:-}; do
        args+=(--label "$label")
    done
    if [ -n "${MINISW_DOCKER_HOST:-}" ]; then
        args+=(--docker-host "$MINISW_DOCKER_HOST")
    fi
    args+=(--networking "${MINISW_NETWORKING:-kernel}")
    if [ "${MINISW_REFUSAL:-0}" = 1 ]; then
        args+=(--control-listen "$MINISW_ADDR:$port")
    fi
    ;;
*)
    echo "minisw-node.sh: unknown role \"$role\": expected manager or agent" >&2
    exit 2
    ;;
esac
exec "${minisw[@]}" "${args[@]}"

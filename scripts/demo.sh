#!/usr/bin/env bash
# Set up, start the default local cluster (3 managers and 2 workers, each a separate host: a
# network namespace with its own Docker daemon), deploy the seed walkthrough's service with a
# published port, and show that every host answers on it, hosts that run none of its tasks too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
minisw dev up --hosts --managers 3 --workers 2
minisw service rm web >/dev/null 2>&1 || true
minisw service create --name web --replicas 3 --publish 8080:80 minisw/web:1
minisw service ls
minisw service ps web
status=$(minisw dev status --json)
# One line per host: its address, what answers on :8080 there, and its own daemon's containers.
python3 - "$status" <<'PY'
import json, subprocess, sys, urllib.request

rows = json.loads(sys.argv[1])
for row in (r for r in rows if r["role"] == "agent"):
    answer = urllib.request.urlopen(f"http://{row['address']}:8080/", timeout=5).read().decode().strip()
    names = subprocess.run(
        ["docker", "-H", row["docker_host"], "ps", "--format", "{{.Names}}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    runs = ", ".join(sorted(n.rsplit(".", 1)[0] for n in names)) or "no task"
    print(f"{row['name']:<9} {row['address']}:8080 -> {answer:<28}  its dockerd runs: {runs}")
PY
echo "The cluster keeps running: try \`minisw service scale web=5\`, \`minisw service update --image minisw/web:2 web\`,"
echo "\`minisw service rollback web\`, \`minisw dev kill worker1\`; stop it with \`minisw dev down\`."

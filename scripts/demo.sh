#!/usr/bin/env bash
# Set up, start the default local cluster (3 managers, 2 workers, all on this machine), deploy
# the seed walkthrough's service with a published port, and show that it answers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
minisw dev up --managers 3 --workers 2
minisw service rm web >/dev/null 2>&1 || true
minisw service create --name web --replicas 3 --publish 8080:80 minisw/web:1
minisw service ls
minisw service ps web
for host in 127.77.0.11 127.77.1.11 127.77.1.12; do
    printf '%s:8080 -> ' "$host"
    python3 -c "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip())" "http://$host:8080/"
done
echo "The cluster keeps running: try \`minisw service scale web=5\`, \`minisw service update --image minisw/web:2 web\`,"
echo "\`minisw service rollback web\`; stop it with \`minisw dev down\`."

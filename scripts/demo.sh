#!/usr/bin/env bash
# Set up, start the default local cluster (3 managers and 2 workers, each a separate host: a
# network namespace with its own Docker daemon), deploy the seed walkthrough's service with a
# published port, and show that every host answers on it, hosts that run none of its tasks too;
# then a second service on an overlay network, reached by name through its VIP from a web task.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
minisw dev up --hosts --managers 3 --workers 2
minisw service rm web api >/dev/null 2>&1 || true
minisw network create -d overlay appnet >/dev/null 2>&1 || true
minisw service create --name web --replicas 3 --publish 8080:80 --network appnet minisw/web:1
minisw service create --name api --replicas 2 --network appnet minisw/web:2
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

# Discovery and the VIP: from a web task's container, `api` resolves to its VIP and answers.
def web_containers(row):
    return subprocess.run(["docker", "-H", row["docker_host"], "ps", "-q", "--filter", "label=minisw.service.name=web"],
                          capture_output=True, text=True, check=True).stdout.split()
row, web = next(((r, c) for r in rows if r["role"] == "agent" and (c := web_containers(r))), (None, []))
if web:
    def run(*cmd):
        return subprocess.run(["docker", "-H", row["docker_host"], "exec", web[0], *cmd],
                              capture_output=True, text=True).stdout
    vip = [l.split()[-1] for l in run("nslookup", "api").split("Name:")[-1].splitlines() if l.startswith("Address")]
    print(f"from a web task on {row['name']}: api -> {', '.join(vip)}; tasks.api -> "
          + ", ".join(l.split()[-1] for l in run("nslookup", "tasks.api").splitlines()[2:] if l.startswith("Address")))
    print("  http://api/ ->", ", ".join(sorted({run("wget", "-q", "-O-", "http://api/").strip() for _ in range(6)})))
PY
echo "The cluster keeps running: try \`minisw service scale web=5\`, \`minisw service update --image minisw/web:2 web\`,"
echo "\`minisw service rollback web\`, \`minisw dev kill worker1\`; stop it with \`minisw dev down\`."

#!/usr/bin/env bash
# Set up, then run every test: unit tests, then real managers, agents and Docker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m pytest -q -p no:cacheprovider "$@"

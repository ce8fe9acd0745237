#!/usr/bin/env bash
# Install the proxy into ./.venv and start it (filesystem backend in ./data, port 9000).
# Extra arguments are passed to deltaglider-proxy (e.g. --listen 127.0.0.1:9000 --config my.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet .
exec .venv/bin/deltaglider-proxy "$@"

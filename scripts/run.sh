#!/usr/bin/env bash
# Install the proxy into ./.venv and start it (filesystem backend in ./data, port 9000).
# Extra arguments are passed to deltaglider-proxy (e.g. --listen 127.0.0.1:9000 --config my.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
# The delta codec is the Debian xdelta3 binary.
if ! command -v xdelta3 >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq xdelta3 >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet .
exec .venv/bin/deltaglider-proxy "$@"

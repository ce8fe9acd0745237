#!/usr/bin/env bash
# Install everything the tests need (Debian tools, the Python venv) and run the whole suite:
# lint, type check, then pytest (unit + integration against real servers and real clients).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for tool in xdelta3 rclone s3cmd setfattr promtool; do
  command -v "$tool" >/dev/null 2>&1 || need_apt+=("$tool")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  packages=()
  for tool in "${need_apt[@]}"; do
    case "$tool" in setfattr) packages+=(attr) ;; promtool) packages+=(prometheus) ;; *) packages+=("$tool") ;; esac
  done
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test]'

.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
# Two workers: the integration tests spend most of their time waiting on servers and clients.
exec .venv/bin/python -m pytest -n 2 -q "$@"

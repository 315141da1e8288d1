#!/usr/bin/env bash
# Creates .venv and installs the project, every plugin in plugins/, and the apt packages the
# tests and benchmarks use, at the versions in constraints.txt (the lock of tested versions;
# `make upgrade` refreshes it). Idempotent; `make` reruns it when a pyproject or the lock changes.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q "${need_apt[@]}" >/dev/null; }
  else
    echo "setup: please install ${need_apt[*]} (apt-get install ${need_apt[*]}); continuing" >&2
  fi
fi

VENV=${VENV:-.venv}
LOCK=${LOCK-constraints.txt}   # LOCK= (empty): resolve the newest versions the ranges allow
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pin=()
[ -n "$LOCK" ] && pin=(-c "$LOCK")
"$VENV/bin/python" -m pip install -q -U "${pin[@]}" pip
# torch only ever as this exact pin: any other spec pulls a multi-GB CUDA build.
if [ -d plugins/atomr-infer-torch ]; then
  "$VENV/bin/python" -m pip install -q torch==2.13.0
fi

# the core distribution was called atomr-infer before 0.2 (a name that belongs to the Rust
# original's bindings on PyPI): an old editable install would shadow the renamed one
if "$VENV/bin/python" -m pip show -q atomr-infer >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip uninstall -q -y atomr-infer
fi

args=(-e ".[redis,test]")
for dir in plugins/*/; do
  [ -f "$dir/pyproject.toml" ] || continue
  extra=""
  [ -f "$dir/.install-extras" ] && extra="[$(cat "$dir/.install-extras")]"
  args+=(-e "${dir%/}${extra}")
done
"$VENV/bin/python" -m pip install -q "${pin[@]}" "${args[@]}"

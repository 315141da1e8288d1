#!/usr/bin/env bash
# Creates .venv and installs the project, every plugin in plugins/, and the apt packages the
# tests and benchmarks use. Idempotent; `make` reruns it when a pyproject changes.
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

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -U pip
# torch only ever as this exact pin: any other spec pulls a multi-GB CUDA build.
if [ -d plugins/atomr-infer-torch ]; then
  .venv/bin/python -m pip install -q torch==2.13.0
fi

args=(-e ".[redis,test]")
for dir in plugins/*/; do
  [ -f "$dir/pyproject.toml" ] || continue
  extra=""
  [ -f "$dir/.install-extras" ] && extra="[$(cat "$dir/.install-extras")]"
  args+=(-e "${dir%/}${extra}")
done
.venv/bin/python -m pip install -q "${args[@]}"

#!/usr/bin/env bash
# Set up .venv and run the whole flow on the default (cpu) preset. Extra arguments go to `ulmfit run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh .venv
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/ulmfit run "$@"

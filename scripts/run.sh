#!/usr/bin/env bash
# Set up .venv and run the whole flow on the default (cpu) preset. Extra arguments go to `ulmfit run`.
set -euo pipefail
# A relative ULMFIT_DATA_DIR means relative to where you ran this, not to the repo.
if [[ -n "${ULMFIT_DATA_DIR:-}" ]]; then export ULMFIT_DATA_DIR="$(realpath -m "$ULMFIT_DATA_DIR")"; fi
cd "$(dirname "$0")/.."
scripts/setup-venv.sh .venv
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/ulmfit run "$@"

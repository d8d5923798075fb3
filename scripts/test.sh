#!/usr/bin/env bash
# Set up .venv-test and run the test suite. Extra arguments go to pytest.
set -euo pipefail
# A relative ULMFIT_DATA_DIR means relative to where you ran this, not to the repo.
if [[ -n "${ULMFIT_DATA_DIR:-}" ]]; then export ULMFIT_DATA_DIR="$(realpath -m "$ULMFIT_DATA_DIR")"; fi
cd "$(dirname "$0")/.."
scripts/setup-venv.sh .venv-test test
export PREFECT_SERVER_ANALYTICS_ENABLED=false
# One worker per physical core, each test module whole on one worker (its module-scoped runs and cache
# stay together); `-n 0` after these runs everything in this process.
exec .venv-test/bin/python -m pytest -n auto --dist loadfile "$@"

#!/usr/bin/env bash
# Set up .venv-test and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh .venv-test test
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv-test/bin/python -m pytest "$@"

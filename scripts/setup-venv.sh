#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install the project into it.
# usage: scripts/setup-venv.sh VENV_DIR [EXTRAS]
# torch is pinned to 2.13.0 first: an unpinned torch would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$1
extras=${2:-}
stamp="$venv/.ulmfit-installed"
want="$(cat pyproject.toml scripts/setup-venv.sh | sha256sum | cut -d' ' -f1) $extras"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0  # already installed from this pyproject
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
# fastai pulls a torchvision wheel built for CUDA torch; with the CPU torch it fails to import and
# then `transformers` cannot find its model classes. Nothing here uses torchvision: drop a broken one.
if ! "$venv/bin/python" -c "import torchvision" >/dev/null 2>&1; then
  "$venv/bin/python" -m pip uninstall --quiet --yes torchvision
fi
echo "$want" > "$stamp"

"""The package stands alone: a non-editable install of the built wheel runs the smoke flow from an
unrelated working directory, so nothing it needs (presets, the dataset registry) lives outside it."""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, **kwargs):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kwargs)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


@pytest.mark.slow
def test_wheel_install_runs_the_smoke_flow_from_anywhere(tmp_path, data_dir):
    # Built from a copy of the tracked files: the build writes build/ and *.egg-info beside its source.
    files = _run(["git", "ls-files"], cwd=REPO).stdout.split()
    source = tmp_path / "src"
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
          tmp_path / "dist", source])
    wheel = next((tmp_path / "dist").glob("ulmfit_flow-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"pipeline/data/datasets.toml", "pipeline/presets/smoke.toml", "flows/cli.py"} <= set(names)

    # A fresh venv with the wheel (not the source tree) installed; the dependencies are this test
    # environment's, reached through a .pth path entry (which loads no editable-install hooks).
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel])
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = _run([python, "-c", "import pipeline, flows; print(pipeline.__file__, flows.__file__)"],
                 cwd=elsewhere, env=env).stdout.split()
    assert all(path.startswith(str(venv)) for path in where), where  # the installed copy, not the repository
    proc = _run([venv / "bin" / "ulmfit", "run", "--preset", "smoke", "--out", "run"], cwd=elsewhere, env=env)
    assert (elsewhere / "run" / "classify" / "manifest.json").is_file(), proc.stdout[-2000:]
    assert proc.stdout.count("Completed") >= 3

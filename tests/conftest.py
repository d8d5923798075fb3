"""Shared fixtures. Real data comes from $ULMFIT_DATA_DIR (CI: ../shared/data beside the repo)."""
import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("ULMFIT_DATA_DIR", str(REPO.parent / "shared" / "data"))
# Keep tests away from the user's caches and Prefect database.
_TMP = Path(tempfile.mkdtemp(prefix="ulmfit-tests-"))
os.environ["ULMFIT_CACHE_DIR"] = str(_TMP / "cache")
os.environ["PREFECT_HOME"] = str(_TMP / "prefect")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["ULMFIT_DATA_DIR"])
    if not (path / "imdb" / "train.parquet").exists():
        pytest.fail(f"real data not found in {path}: set ULMFIT_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def smoke_cfg():
    from pipeline.config import load_config

    return load_config("smoke")

"""A new user's machine: no parquet copies, no caches, only fast.ai's canonical archives.

The archives are built from ../shared/data in exactly fast.ai's layouts (wikitext-2.tgz: header-less
wikitext-2/{train,test}.csv, one article per row, no valid split; imdb.tgz: imdb/{train,test}/{neg,pos}/
*.txt and imdb/unsup/*.txt) and served on a loopback HTTP server that stands in for the S3 bucket
(ULMFIT_MIRROR). The README's command then runs with a fresh HOME, so every default path is new.
"""
from __future__ import annotations

import functools
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.data.corpora import load_corpus
from pipeline.validate import check_run

REPO = Path(__file__).resolve().parents[1]
# Enough reviews for the cpu preset's up-front checks: 1,000 labels + 400 validation (balanced)
# and a 5,000-review balanced test sample; the smoke preset needs far fewer.
IMDB_SLICE = {"train": 800, "test": 2_500}  # per class
IMDB_UNSUP = 500


def _add(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _wikitext_tgz(path: Path, real: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):  # fast.ai's archive has no valid split
            articles = load_corpus("wikitext-2", split, data_dir=real, download=False)["text"]
            _add(tar, f"wikitext-2/{split}.csv", pd.DataFrame({0: articles}).to_csv(header=False, index=False))


def _imdb_tgz(path: Path, real: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for split, per_class in IMDB_SLICE.items():
            df = pd.read_parquet(real / "imdb" / f"{split}.parquet")
            for label in ("neg", "pos"):
                for i, text in enumerate(df[df["label"] == label]["text"].head(per_class)):
                    _add(tar, f"imdb/{split}/{label}/{i}_{7 if label == 'pos' else 3}.txt", text)
        unsup = pd.read_parquet(real / "imdb" / "unsup.parquet")["text"].head(IMDB_UNSUP)
        for i, text in enumerate(unsup):
            _add(tar, f"imdb/unsup/{i}_0.txt", text)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.hits.append(self.path)
        super().do_GET()


@pytest.fixture(scope="module")
def s3_mirror(tmp_path_factory, data_dir):
    """fast.ai's bucket on a loopback port: /fast-ai-nlp/{wikitext-2,imdb}.tgz."""
    root = tmp_path_factory.mktemp("s3")
    bucket = root / "fast-ai-nlp"
    bucket.mkdir()
    _wikitext_tgz(bucket / "wikitext-2.tgz", data_dir)
    _imdb_tgz(bucket / "imdb.tgz", data_dir)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    server.hits = []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield server, f"http://127.0.0.1:{server.server_port}/fast-ai-nlp"
    finally:
        server.shutdown()
        server.server_close()


def _new_user_env(home: Path, mirror: str) -> dict:
    # a new user has no data, no cache and no Prefect server: the run starts its own temporary one
    unset = ("ULMFIT_DATA_DIR", "ULMFIT_CACHE_DIR", "PREFECT_API_URL", "PREFECT_UI_URL")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    return {**env, "HOME": str(home), "ULMFIT_MIRROR": mirror, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_readme_command_runs_from_the_canonical_archives(s3_mirror, tmp_path):
    server, mirror = s3_mirror
    home = tmp_path / "home"
    home.mkdir()
    ulmfit = Path(sys.executable).parent / "ulmfit"  # the console script README's command runs
    command = [str(ulmfit)] if ulmfit.exists() else [sys.executable, "-m", "flows.cli"]
    proc = subprocess.run([*command, "run", "--preset", "smoke", "--out", str(tmp_path / "runs" / "smoke")],
                          env=_new_user_env(home, mirror), cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = home / ".cache" / "ulmfit-flow" / "data"
    assert sorted(p.name for p in (data / "wikitext-2").iterdir()) == ["test.csv", "train.csv"]
    assert sorted(server.hits) == ["/fast-ai-nlp/imdb.tgz", "/fast-ai-nlp/wikitext-2.tgz"]  # each once
    import json

    pretrain = json.loads((tmp_path / "runs" / "smoke" / "pretrain" / "metrics.json").read_text())
    assert pretrain["valid_source"] == "2 held-out wikitext-2/train articles"
    assert "held-out wikitext-2/train articles" in (tmp_path / "runs" / "smoke" / "pretrain" / "card.md").read_text()
    classify = json.loads((tmp_path / "runs" / "smoke" / "classify" / "metrics.json").read_text())
    assert 0.0 <= classify["test_accuracy"] <= 1.0 and classify["test_size"] == 60


def test_default_preset_checks_pass_on_the_canonical_archives(s3_mirror, tmp_path, monkeypatch):
    """`ulmfit run` with no settings gets past its up-front checks (data, settings, outputs), which load
    every corpus as the stages will: it starts training on a machine that has only the archives."""
    _, mirror = s3_mirror
    monkeypatch.setenv("ULMFIT_MIRROR", mirror)
    cfg = load_config("cpu", [f"data_dir={tmp_path / 'data'}", f"cache_dir={tmp_path / 'cache'}"])
    assert cfg.pretrain.valid_split == "auto"
    check_run(cfg, tmp_path / "runs" / "cpu")
    from pipeline.stages.pretrain import corpus_texts, valid_split

    assert valid_split(cfg) is None  # the archive has no valid split: held-out training articles
    train, valid = corpus_texts(cfg)
    assert len(train) == cfg.pretrain.max_docs and len(valid) == cfg.pretrain.max_valid_docs
    assert not set(valid) & set(train)

"""Self-describing stage artifacts, written atomically.

A stage folder holds:
    model.pt       {"state_dict", "config", "vocab", "backbone", "kind", ...} - torch.load(weights_only=True)
    metrics.json   headline numbers
    history.csv    one row per epoch
    card.md        a short human-readable summary (history.png: loss curves, referenced from it)
    manifest.json  sha256 of every file + the stage's cache key; written last

The whole folder is built under a temporary name and renamed into place, so a killed run
leaves either the previous complete folder or nothing - never a half artifact.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch

from pipeline import distributed
from pipeline.errors import ArtifactError

MANIFEST = "manifest.json"
MODEL_FILE = "model.pt"


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp folder beside `target`; on success it replaces `target` in one rename.

    A failed write (disk full, permissions) raises one ArtifactError and leaves no trace:
    the temp folder is removed and `target` keeps its previous content.
    """
    target = Path(target)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ArtifactError(f"{target}: cannot write ({reason}); nothing was written there") from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# (path, inode, size, mtime_ns) -> sha256: a file unchanged since it was last hashed in this
# process is not read again, so the flow's cache check and the next stage's load hash once.
_HASHED: dict[tuple, str] = {}


def _cached_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = sha256_file(path)
    return _HASHED[key]


def verify_folder(folder: Path, names: list[str] | None = None) -> dict:
    """Check files against the manifest's sha256s; return the manifest or raise one ArtifactError."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise ArtifactError(f"{folder / MANIFEST}: malformed manifest (no file list)")
    for name in names if names is not None else sorted(files):
        path = folder / name
        if name not in files:
            raise ArtifactError(f"{path}: not listed in {MANIFEST}; the stage folder is incomplete")
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; the stage folder is incomplete")
        if _cached_sha256(path) != files[name]:
            raise ArtifactError(f"{path}: corrupted or truncated (sha256 does not match {MANIFEST}); "
                                "rerun the stage to recompute it")
    return manifest


def write_stage(target: Path, *, model: dict[str, Any], metrics: dict, history: pd.DataFrame,
                card: str, cache_key: str = "", extra_files: dict[str, bytes] | None = None) -> Path:
    """Write a complete stage folder atomically and return its path.

    Under DDP only rank 0 writes (every rank holds the same weights); the others wait for it, so
    no rank returns before the folder is in place."""
    if distributed.is_rank0():
        _write_folder(Path(target), model, metrics, history, card, cache_key, extra_files)
    distributed.barrier()
    return Path(target)


def _write_folder(target: Path, model, metrics, history, card, cache_key, extra_files) -> None:
    with atomic_dir(target) as tmp:
        torch.save(model, tmp / MODEL_FILE)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        history.to_csv(tmp / "history.csv", index=False)
        (tmp / "card.md").write_text(card)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps({"cache_key": cache_key, "files": files}, indent=2))


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise ArtifactError(f"{folder}: not a complete stage folder (no {MANIFEST})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: corrupted manifest ({err})") from None


def is_complete(folder: Path, cache_key: str | None = None) -> bool:
    """True when the folder has a manifest whose files all exist with their recorded sha256
    (and, if given, whose cache key matches)."""
    try:
        manifest = read_manifest(folder)
        if cache_key is not None and manifest.get("cache_key") != cache_key:
            return False
        verify_folder(folder)
    except (ArtifactError, OSError, AttributeError):
        return False
    return True


def fingerprint(folder: Path) -> str:
    """Content fingerprint of a stage folder: the hash of its manifest's file hashes."""
    files = read_manifest(folder)["files"]
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def load_model_file(folder: Path, expect_kind: str | None = None) -> dict[str, Any]:
    """Load model.pt safely (weights_only) and check it is the kind of artifact expected."""
    path = Path(folder) / MODEL_FILE
    if not path.exists():
        raise ArtifactError(f"{folder}: no {MODEL_FILE}; is this a stage folder of a ulmfit run?")
    verify_folder(folder, [MODEL_FILE])  # a flipped byte is reported here, not deep inside torch
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated / corrupted / foreign pickles
        raise ArtifactError(f"{path}: cannot be loaded safely ({type(err).__name__}: {err})") from None
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise ArtifactError(f"{path}: not a ulmfit-flow model file")
    if expect_kind and blob.get("kind") != expect_kind:
        raise ArtifactError(f"{path}: holds a {blob.get('kind')!r} model, expected {expect_kind!r}")
    return blob


def read_metrics(folder: Path) -> dict:
    path = Path(folder) / "metrics.json"
    if not path.exists():
        raise ArtifactError(f"{folder}: no metrics.json")
    return json.loads(path.read_text())

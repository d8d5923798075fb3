"""Self-describing stage artifacts, written atomically.

A stage folder holds:
    model.pt       a `ModelFile` (pipeline/artifacts/model_file.py): weights, vocabulary, tokenizer, architecture, the stage's config
                   (and a classifier's classes and data samples) - torch.load(weights_only=True)
    metrics.json   headline numbers
    history.csv    one row per epoch
    card.md        a short human-readable summary (history.png: loss curves, referenced from it)
    manifest.json  sha256 of every file + the stage's cache key; written last

The whole folder is built under a temporary name and renamed into place, so a killed run
leaves either the previous complete folder or nothing - never a half artifact. Only a folder
whose manifest lists every file in it (one this tool wrote) is ever replaced: a user's own folder
or file in the way is reported, never deleted.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pandas as pd
import torch

from pipeline.errors import ArtifactError
from pipeline.training import ranks

if TYPE_CHECKING:  # model.pt's schema reads and writes through this module
    from pipeline.artifacts.model_file import ModelFile

MANIFEST = "manifest.json"
MODEL_FILE = "model.pt"


@contextlib.contextmanager
def atomic_dir(target: Path, may_replace: Callable[[Path], str | None] | None = None) -> Iterator[Path]:
    """Yield a temp folder beside `target`; on success it replaces `target` in one rename.

    Only a folder this tool wrote is ever replaced: `may_replace(target)` (default
    `foreign_content`) says why an existing `target` must stay, and then nothing is written.
    A failed write (disk full, permissions) raises one ArtifactError and leaves no trace:
    the temp folder is removed and `target` keeps its previous content.
    """
    target, why_not = Path(target), may_replace or foreign_content
    refuse_foreign(target, why_not)  # before the caller computes anything
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        yield tmp
        old = None
        if target.exists() or target.is_symlink():
            refuse_foreign(target, why_not)  # it may have appeared meanwhile
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        raise ArtifactError(f"{target}: cannot write ({os_reason(err)}); nothing was written there") from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def partial_dir(stage_dir: str | Path) -> Path:
    """Where a stage folder's epoch checkpoints live while it trains: `<stage>.partial` beside it."""
    stage_dir = Path(stage_dir)
    return stage_dir.with_name(f"{stage_dir.name}.partial")


def _is_checkpoint_file(path: Path) -> bool:
    return path.is_file() and (path.name == "key.txt" or path.suffix == ".pt" or ".tmp-" in path.suffix)


def foreign_checkpoints(folder: Path) -> str | None:
    """None if `folder` (a `partial_dir`) is absent or holds only checkpoint files; otherwise why it is not ours."""
    folder = Path(folder)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        return "exists and is not a checkpoint folder ulmfit wrote"
    extra = sorted(p.name for p in folder.iterdir() if not _is_checkpoint_file(p)) if folder.exists() else []
    return f"holds files ulmfit did not write ({', '.join(extra[:3])})" if extra else None


def remove_checkpoints(folder: Path) -> None:
    """Remove a `partial_dir`'s checkpoint files, then the folder if nothing else is in it (a user's file stays)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return
    for path in folder.iterdir():
        if _is_checkpoint_file(path):
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def os_reason(err: OSError) -> str:
    return err.strerror or str(err)


def foreign_content(folder: Path) -> str | None:
    """None if `folder` is absent or a folder this tool wrote (its manifest lists every file in it);
    otherwise why it must not be replaced. A user's folder (or a file of theirs dropped into a stage
    folder) is never deleted."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return None
    if folder.is_symlink() or not folder.is_dir():
        return "exists and is not a folder ulmfit wrote"
    try:
        files = json.loads((folder / MANIFEST).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        files = None
    if not isinstance(files, dict):
        return f"exists and has no readable {MANIFEST}, so ulmfit did not write it"
    extra = sorted(p.name for p in folder.iterdir() if p.name != MANIFEST and p.name not in files)
    if extra:
        return f"holds files ulmfit did not write ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})"
    return None


def refuse_foreign(target: Path, why_not: Callable[[Path], str | None] = foreign_content) -> None:
    """Raise one ArtifactError if `target` exists and is not the tool's to replace."""
    reason = why_not(Path(target))
    if reason:
        raise ArtifactError(f"{target}: {reason}; not replacing it: move it away or choose another --out")


def save_torch(obj: Any, path: Path) -> None:
    """torch.save through a Python file, so a full disk is an OSError (ENOSPC) like any other write.

    Saving to a path, torch reports a failed write as `RuntimeError: [enforce fail at
    inline_container.cc]` with no reason; through a file object the write's own exception is the
    error's context: an OSError, or the KeyboardInterrupt of a Ctrl-C that came during the write.
    That exception is raised instead."""
    try:
        with open(path, "wb") as fh:
            torch.save(obj, fh)
    except RuntimeError as err:
        cause = err.__context__
        while cause is not None and not isinstance(cause, (OSError, KeyboardInterrupt)):
            cause = cause.__context__
        if cause is None:
            raise
        raise cause from None


def write_manifest(folder: Path, cache_key: str = "") -> None:
    """manifest.json: the sha256 of every file in `folder`; written last, it marks the folder as the tool's."""
    files = {p.name: sha256_file(p) for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name != MANIFEST}
    (Path(folder) / MANIFEST).write_text(json.dumps({"cache_key": cache_key, "files": files}, indent=2))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# (path, inode, size, mtime_ns) -> sha256: a file unchanged since it was last hashed in this
# process is not read again, so the flow's cache check and the next stage's load hash once.
_HASHED: dict[tuple, str] = {}


def cached_sha256(path: Path) -> str:
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)  # a hard link to a hashed file is not read again
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
        if cached_sha256(path) != files[name]:
            raise ArtifactError(f"{path}: corrupted or truncated (sha256 does not match {MANIFEST}); "
                                "rerun the stage to recompute it")
    return manifest


def write_stage(target: Path, *, model: "ModelFile", metrics: dict, history: pd.DataFrame,
                card: str, cache_key: str = "", extra_files: dict[str, bytes] | None = None) -> Path:
    """Write a complete stage folder atomically and return its path.

    Under DDP only rank 0 writes (every rank holds the same weights); the others wait for it, so
    no rank returns before the folder is in place."""
    if ranks.is_rank0():
        _write_folder(Path(target), model, metrics, history, card, cache_key, extra_files)
    ranks.barrier()
    return Path(target)


def _write_folder(target: Path, model, metrics, history, card, cache_key, extra_files) -> None:
    with atomic_dir(target) as tmp:
        model.save(tmp / MODEL_FILE)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        history.to_csv(tmp / "history.csv", index=False)
        (tmp / "card.md").write_text(card)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        write_manifest(tmp, cache_key)


def write_files(target: Path, files: dict[str, bytes], cache_key: str = "") -> Path:
    """Write a folder of these files and its manifest atomically, as a stage folder without a model
    (the ensemble's: pipeline/use/ensemble.py)."""
    with atomic_dir(Path(target)) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        write_manifest(tmp, cache_key)
    return Path(target)


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


def model_fingerprint(folder: Path) -> str:
    """The sha256 of a stage folder's model.pt (from its manifest): all a downstream stage reads of it.

    Not the whole folder: metrics.json and card.md hold timings, so two runs of the same work would
    otherwise give their downstream stages different keys, and a recomputed upstream whose model came
    out bit-identical would retrain everything after it."""
    files = read_manifest(folder)["files"]
    if MODEL_FILE not in files:
        raise ArtifactError(f"{folder}: its manifest lists no {MODEL_FILE}")
    return files[MODEL_FILE]


def read_metrics(folder: Path) -> dict:
    path = Path(folder) / "metrics.json"
    if not path.exists():
        raise ArtifactError(f"{folder}: no metrics.json")
    return json.loads(path.read_text())

"""The stage cache: each stage's key, and a content-addressed store of finished stage folders.

A stage's key is its own config + the content of the folder it builds on + its code version (its
module's import closure, see `pipeline.stages.registry`) + the data folder. Never a run id and
never a path to another run's folder.

Every finished stage is also kept in the store, `<cache dir>/stages/<key>/` (cache dir:
`cache_dir`, else $ULMFIT_CACHE_DIR, else ~/.cache/ulmfit-flow). A run folder whose stage is
missing or stale gets the store's copy at once: its files are hard-linked into the run folder
(copied when the store is on another file system), so every run folder holds its own complete
stages and never reads another run folder. Deleting or moving a run folder, or the whole store,
never breaks another run: at worst a stage is computed again. Every use verifies the files
against their manifest's sha256s, so a damaged copy is recomputed, never trusted, and reported in
one line that names the run folders sharing the damaged file (hard links share its bytes).

One process at a time computes a key (`computing`: an flock on `<cache dir>/locks/<key>.lock`).
Two runs of the same work on one store do not both train it: the second waits for the first's
stage, then takes it from the store. The kernel drops the lock of a killed process, so a crash
never blocks the next run.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from pipeline.artifacts.locking import waiting_lock
from pipeline.artifacts.stage_folder import (
    MANIFEST,
    atomic_dir,
    cached_sha256,
    is_complete,
    model_fingerprint,
    read_manifest,
)
from pipeline.config import RunConfig, stage_config
from pipeline.config_base import default_cache_dir
from pipeline.data.corpora import resolve_data_dir
from pipeline.errors import ArtifactError
from pipeline.stages.registry import REGISTRY, depends_on, get_stage

log = logging.getLogger("ulmfit")


def stage_key(stage: str, cfg: RunConfig, upstream_dir: str | Path | None) -> str:
    section = getattr(cfg, stage, None)
    parts = {
        "config": stage_config(cfg, stage),
        "data_dir": str(resolve_data_dir(cfg.data_dir)),
        "code": get_stage(stage).code_version(),
        "upstream": model_fingerprint(Path(upstream_dir)) if upstream_dir else None,  # what the stage reads
        "init_from": _folder_stamp(getattr(section, "init_from", None)),
    }
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return f"{stage}-{hashlib.sha256(blob).hexdigest()[:32]}"


def stages_to_compute(cfg: RunConfig, folders: dict[str, str | Path], rerun: str | None = None) -> list[str]:
    """The stages of one chain (stage -> folder) that a run would compute, in order: those whose folder does
    not hold their key, the store has not kept, or `rerun` names or builds on. A stage after a computed one
    is computed too (its key depends on what its upstream will hold). The flow decides again, under each
    stage's lock; this is what the validation uses to load only the data that will be read."""
    todo: list[str] = []
    found: dict[str, Path] = {}  # stage -> where its finished folder is now (the run folder or the store)
    for name, stage in REGISTRY.items():
        if stage.upstream is not None and stage.upstream not in found:
            todo.append(name)
            continue
        key = stage_key(name, cfg, found.get(stage.upstream))
        folder, entry = Path(folders[name]).expanduser(), store_entry(cfg, key)
        where = folder if is_complete(folder, key) else entry if is_complete(entry, key) else None
        if where is None or (rerun is not None and depends_on(name, rerun)):
            todo.append(name)
        else:
            found[name] = where
    return todo


def _folder_stamp(folder: str | None) -> list | None:
    """Names, sizes and mtimes of a local checkpoint folder: replacing the checkpoint changes the key."""
    if folder is None or not Path(folder).expanduser().is_dir():
        return None
    return sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in Path(folder).expanduser().iterdir()
                  if p.is_file())


def store_entry(cfg: RunConfig, key: str) -> Path:
    return default_cache_dir(cfg.cache_dir) / "stages" / key


@contextlib.contextmanager
def computing(key: str, cfg: RunConfig):
    """Hold `key` while restoring or computing it: a second process with the same key waits here,
    then finds the first one's stage in the store."""
    def waiting(holder: str) -> None:
        log.info("%s: another run (%s) is computing this stage with the same settings; waiting for it, "
                 "then using its result", key, holder)
    with waiting_lock(default_cache_dir(cfg.cache_dir) / "locks" / f"{key}.lock", waiting):
        yield


def restore(folder: Path, key: str, cfg: RunConfig) -> bool:
    """True if `folder` holds the complete stage for `key`: already, or now, linked in from the store."""
    folder, entry = Path(folder), store_entry(cfg, key)
    if is_complete(folder, key):
        if not is_complete(entry, key):
            keep(folder, key, cfg)  # a later run folder with these settings can have it too
        return True
    reported = _report_damage(folder, key, cfg)
    if not is_complete(entry, key):
        if not reported:  # a run folder's damaged file is the entry's too when they share it: one line
            _report_damage(entry, key, cfg)
        return False
    try:
        _link_folder(entry, folder)
        _record_link(cfg, key, folder)
    except ArtifactError as err:
        log.warning("could not take %s from the stage cache (%s); computing it", folder.name, err)
        return False
    return is_complete(folder, key)  # the entry may have been replaced while it was being linked


def keep(folder: Path, key: str, cfg: RunConfig) -> None:
    """Put a finished stage folder into the store under its key (replacing what was there)."""
    try:
        _link_folder(Path(folder), store_entry(cfg, key))
        _record_link(cfg, key, Path(folder))
    except ArtifactError as err:  # the run folder is complete either way: the store is a convenience
        log.warning("could not keep %s in the stage cache: %s", folder, err)


def _links_file(cfg: RunConfig, key: str) -> Path:
    return default_cache_dir(cfg.cache_dir) / "links" / f"{key}.txt"


def _record_link(cfg: RunConfig, key: str, folder: Path) -> None:
    """Note which run folder shares the entry's files, to name it if one of them is ever damaged."""
    path = _links_file(cfg, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        known = path.read_text().splitlines() if path.exists() else []
        if str(folder.resolve()) not in known:
            with open(path, "a") as fh:
                fh.write(f"{folder.resolve()}\n")
    except OSError:  # only for the damage report
        pass


def damaged_files(folder: Path, key: str) -> list[str]:
    """The files of a folder that holds `key`'s stage (by its manifest) whose bytes no longer match."""
    try:
        manifest = read_manifest(folder)
        files = manifest["files"] if manifest.get("cache_key") == key else {}
        return [name for name, digest in sorted(files.items())
                if not (folder / name).is_file() or cached_sha256(folder / name) != digest]
    except (ArtifactError, OSError, AttributeError, KeyError, TypeError):
        return []


def _report_damage(folder: Path, key: str, cfg: RunConfig) -> bool:
    """One warning line where a folder that should hold `key` has lost or changed a file; True if so."""
    damaged = damaged_files(folder, key)
    if not damaged:
        return False
    path = folder / damaged[0]
    sharing = _sharing(cfg, key, path, folder)
    also = f"; the same damaged file (a hard link) is in {', '.join(sharing)}" if sharing else ""
    log.warning("%s: damaged (sha256 does not match %s), so not used%s", path, MANIFEST, also)
    return True


def _sharing(cfg: RunConfig, key: str, path: Path, folder: Path) -> list[str]:
    """The other folders (the store entry and the run folders on record) holding this very file."""
    try:
        listed = _links_file(cfg, key).read_text().splitlines() if _links_file(cfg, key).exists() else []
    except OSError:
        listed = []
    others = [store_entry(cfg, key)] + [Path(p) for p in listed]
    found = []
    for other in others:
        candidate = other / path.name
        with contextlib.suppress(OSError):
            if other.resolve() != folder.resolve() and candidate.exists() and os.path.samefile(candidate, path):
                found.append(str(other))
    return found


def _link_folder(source: Path, target: Path) -> None:
    """Replace `target` with a folder of hard links to `source`'s files (copies across file systems)."""
    with atomic_dir(target) as tmp:
        for path in sorted(source.iterdir()):
            if not path.is_file():
                continue
            try:
                os.link(path, tmp / path.name)
            except OSError:
                shutil.copy2(path, tmp / path.name)

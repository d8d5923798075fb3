"""Stage cache keys: the stage's own config + its upstream artifact's content + its code version.

Never the run id (Prefect's DEFAULT policy includes RUN_ID, which defeats cross-run caching).
A cached result only counts while the stage folder on disk is complete and was written for
that same key; otherwise the flow calls the task with refresh_cache=True (see `needs_refresh`),
which recomputes it and stores the new result under the same key.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pipeline
from pipeline.artifacts import fingerprint, is_complete
from pipeline.config import RunConfig, stage_config
from pipeline.data import resolve_data_dir

PIPELINE_DIR = Path(pipeline.__file__).parent
SHARED_CODE = ["config.py", "tokens.py", "text.py", "artifacts.py", "backbones.py", "hf_backbones.py",
               "masking.py", "training.py", "data.py", "download.py", "stages/common.py"]
# Not hashed: distributed.py, ddp.py, accel.py and launch.py decide how fast and on how many
# processes a stage runs, not what it computes (nproc and compile are not in the key either).
STAGE_CODE = {
    "pretrain": ["lm.py", "stages/pretrain.py"],
    "adapt": ["lm.py", "transfer.py", "stages/adapt.py"],
    "classify": ["stages/classify.py", "stages/classify_data.py"],
}


def code_version(stage: str) -> str:
    digest = hashlib.sha256()
    for rel in SHARED_CODE + STAGE_CODE[stage]:
        path = PIPELINE_DIR / rel
        digest.update(rel.encode() + b"\0" + (path.read_bytes() if path.exists() else b""))
    return digest.hexdigest()


def stage_key(stage: str, cfg: RunConfig, upstream_dir: str | None) -> str:
    parts = {
        "config": stage_config(cfg, stage),
        "data_dir": str(resolve_data_dir(cfg.data_dir)),
        "code": code_version(stage),
        "upstream": fingerprint(Path(upstream_dir)) if upstream_dir else None,
        "init_from": _folder_stamp(cfg.pretrain.init_from) if stage == "pretrain" else None,
    }
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return f"{stage}-{hashlib.sha256(blob).hexdigest()[:32]}"


def _folder_stamp(folder: str | None) -> list | None:
    """Names, sizes and mtimes of a local checkpoint folder: replacing the checkpoint changes the key."""
    if folder is None or not Path(folder).expanduser().is_dir():
        return None
    return sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in Path(folder).expanduser().iterdir()
                  if p.is_file())


def cache_key_fn(context, parameters: dict) -> str:
    """Prefect hook: the key the flow computed with `stage_key`."""
    return parameters["cache_key"]


def needs_refresh(out_dir: str, key: str) -> bool:
    """A cached result is only valid while its artifact folder is complete and holds this key's output."""
    return not is_complete(Path(out_dir), key)

"""The base classes of every config section: `pipeline.config` builds the run's config from them, and each
backbone's registry entry (`pipeline.models.backbones`, `pipeline.models.hf_backbones`) its own size section. Apart from
`pipeline.config` so that the backbones need not import it (config asks the backbone registry which
size sections exist: importing each other would be a circle). Also where settings' defaults that every
layer needs resolve (the cache root), for the same reason."""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


def default_cache_dir(override: str | None = None) -> Path:
    """The cache root (token cache, stage store, downloaded models): `cache_dir`, else $ULMFIT_CACHE_DIR,
    else ~/.cache/ulmfit-flow."""
    root = override or os.environ.get("ULMFIT_CACHE_DIR") or "~/.cache/ulmfit-flow"
    return Path(root).expanduser().resolve()


class Frozen(BaseModel):
    # Unknown keys and wrong types are errors, not silently ignored or coerced: strict, so `true` is
    # not read as 1 and 2.0 not as an integer, and no NaN or infinity ever reaches a run.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False, validate_default=True)


class SizeSection(Frozen):
    """Base of a backbone's size model: its `[model.<backbone>]` section, owned by its registry entry."""

    lr_mult: float = Field(1.0, gt=0, description="Multiplies every learning rate of the preset for this backbone (pretrain.lr, adapt.lr, adapt.frozen_lr, classify.lrs), so one preset serves backbones that train at different rates (bert: 0.1, RESULTS.md).")

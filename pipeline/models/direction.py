"""Reading direction: a forward model reads a document from its first token to its last, a backward
model from its last to its first (ULMFiT's forward + backward ensemble, pipeline/use/ensemble.py).

A backward model reads each document's ids reversed, except that a leading bos id stays first:

    forward   [bos, t1, t2, ..., tn]
    backward  [bos, tn, ..., t2, t1]

so both directions see a document start marker before the document, and the classifier's
`first`-token pooling still finds it. `orient` is an involution: applied twice it gives the
document back in reading order (how a backward LM's samples are shown).

A stage reads one direction. `model.direction = "both"` is split by the flow into a forward and a
backward chain (`pipeline.artifacts.layout.chains`); a stage that is handed "both" refuses it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.errors import ArtifactError, ConfigError

DIRECTIONS = ("forward", "backward")


def single_direction(direction: str) -> str:
    """`direction` if a stage can read it (forward, backward); else one ConfigError."""
    if direction not in DIRECTIONS:
        raise ConfigError(f"model.direction={direction!r} reached a stage, which reads one direction "
                          f"({' or '.join(DIRECTIONS)}); 'both' is run by `ulmfit run` as a forward and a "
                          "backward chain of stages plus their ensemble")
    return direction


def orient(ids: Sequence[int] | np.ndarray, bos: int | None, direction: str) -> np.ndarray:
    """A document's token ids as a model of `direction` reads them, as an int64 array."""
    ids = np.asarray(ids, dtype=np.int64)
    if single_direction(direction) == "forward" or len(ids) < 2:
        return ids
    keep = 1 if bos is not None and ids[0] == bos else 0
    return np.concatenate([ids[:keep], ids[keep:][::-1]])


def model_direction(config: dict) -> str:
    """The direction recorded in a model file's config (files written before the setting: forward)."""
    return single_direction((config.get("model") or {}).get("direction", "forward"))


def check_upstream(config: dict, direction: str, folder) -> None:
    """A stage builds only on a model that reads in its own direction."""
    upstream = model_direction(config)
    if upstream != direction:
        raise ArtifactError(f"{folder}: its model reads {upstream}, but this stage reads {direction} "
                            "(model.direction); build on a stage of the same direction")

"""LM check: the adapted language model re-saved unchanged, with its weight count (a test stage in the middle of the chain)."""
from __future__ import annotations

import pandas as pd

from pipeline.artifacts.cards import card
from pipeline.artifacts.model_file import load_model_file
from pipeline.artifacts.stage_folder import write_stage
from pipeline.stages.context import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    model = load_model_file(ctx.upstream(), expect_kind="lm")
    metrics = {"n_weights": sum(v.numel() for v in model.state_dict.values())}
    write_stage(ctx.out_dir, model=model, metrics=metrics, history=pd.DataFrame(), cache_key=ctx.cache_key,
                card=card("LM check", f"The language model of {ctx.upstream()}, unchanged.", metrics))
    return StageResult(ctx.stage, str(ctx.out_dir), metrics)

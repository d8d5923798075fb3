"""One module per stage, each with one entry point `run(ctx: StageContext) -> StageResult`; the stages
are listed in `pipeline.stages.registry`."""

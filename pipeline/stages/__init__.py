"""One module per stage, each with one entry point `run(cfg, ...) -> StageResult`."""

"""`compare`: backbones x {full pipeline, no pretraining, no adaptation} (x label budgets) as one Prefect flow.

Each cell is a `compare-cell` subflow running the three cached stage tasks; stages shared
between cells (e.g. one backbone's pretraining) hit the cache. The table, plot and markdown
are written to `<out>/report/` and published as Prefect artifacts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from prefect import flow

from flows.ulmfit_flow import run_stages
from pipeline.compare import VARIANTS, Cell, cell_row, grid, markdown, write_report
from pipeline.config import validate_config

Backbone = Literal["awd_lstm", "gpt", "bert"]
Variant = Literal["full", "no_pretrain", "no_adapt"]


@flow(name="compare-cell", log_prints=True, flow_run_name="{name}")
def cell_flow(name: str, cell_json: str, stage_dirs: dict) -> dict:
    """One cell of the grid: the three stages with this cell's config and shared stage folders."""
    cfg = validate_config(json.loads(cell_json))
    root = Path(stage_dirs["classify"]).parent.parent  # <out>/<backbone>/classify-...: cells lock <out> in turn
    return run_stages(cfg, str(root), stage_dirs=stage_dirs)


def run_cell(cell: Cell) -> dict:
    summary = cell_flow(cell.name, cell.config.model_dump_json(), cell.stage_dirs)
    return {stage: info["state"] for stage, info in summary.items()}


@flow(name="compare", log_prints=True, persist_result=True)
def compare_flow(preset: str = "cpu", backbones: list[Backbone] = ["awd_lstm", "gpt", "bert"],  # noqa: B006
                 variants: list[Variant] = list(VARIANTS), n_labels: Optional[list[int]] = None,  # noqa: B006
                 overrides: Optional[list[str]] = None, out_dir: Optional[str] = None) -> dict:
    """Run every cell (cached), then write and publish the comparison table and plot."""
    out = out_dir or f"runs/compare-{preset}"
    cells = grid(preset, list(backbones), list(variants), n_labels, overrides or [], out)
    states, rows = {}, []
    for cell in cells:
        states[cell.name] = run_cell(cell)
        rows.append(cell_row(cell))
    command = " ".join(["ulmfit compare", f"--preset {preset}", f"--backbones {','.join(backbones)}",
                        f"--variants {','.join(variants)}"]
                       + ([f"--n-labels {','.join(map(str, n_labels))}"] if n_labels else [])
                       + [f"--set {o}" for o in overrides or []] + [f"--out {out}"])
    report = write_report(out, rows, command)
    _publish(rows, report)
    return {"report": str(report), "rows": rows, "states": states}


def _publish(rows: list[dict], report) -> None:
    """Table + markdown artifacts in the Prefect UI (best effort: a run without an API still finishes)."""
    import pandas as pd
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    try:
        create_table_artifact(key="compare-table", table=rows, description=f"Backbone comparison ({report})")
        create_markdown_artifact(key="compare-report", markdown=(report / "compare.md").read_text()
                                 + f"\n\nPlot: `{report / 'compare.png'}`\n", description="Backbone comparison")
    except Exception as err:  # noqa: BLE001 - artifacts are a convenience, the files are the record
        print(f"could not publish Prefect artifacts: {err}")
    print(markdown(pd.DataFrame(rows)))

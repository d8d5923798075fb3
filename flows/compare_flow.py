"""`compare`: backbones x {full pipeline, no pretraining, no adaptation} (x label budgets) as one Prefect flow.

Each cell is a `compare-cell` subflow running the stages with the cell's validated config and its
explicit stage folders; stages shared between cells (e.g. one backbone's pretraining) are Cached.
Every cell's inputs and outputs are checked (`pipeline.validate`) before the first stage starts.
The compare folder is locked for the whole grid. The table, plot and markdown are written to
`<out>/report/` and published as Prefect artifacts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from prefect import flow

from flows.params import BackboneName, Preset
from flows.ulmfit_flow import run_stages
from pipeline.artifacts.locking import run_dir_lock
from pipeline.config import RunConfig, load_config
from pipeline.models.backbones import REGISTRY as BACKBONES
from pipeline.study.compare import VARIANTS, Cell, cell_row, checked_grid, compare_command
from pipeline.study.report import markdown, summarize, update_results, write_report

Variant = Literal[tuple(VARIANTS)]


@flow(name="compare-cell", log_prints=True, flow_run_name="{name}")
def cell_flow(name: str, config: RunConfig, folders: dict[str, str]) -> dict:
    """One cell of the grid: the stages with this cell's config, in its (partly shared) stage folders."""
    return run_stages(config, {stage: Path(folder) for stage, folder in folders.items()})


def form_values(preset: str) -> dict:
    """What the `compare/<preset>` deployment's form opens with (flows/forms.py)."""
    n_labels = load_config(preset).classify.n_labels  # None (every label: the full preset) stays optional
    return {"backbones": list(BACKBONES), "variants": list(VARIANTS), "n_labels": [n_labels] if n_labels else None,
            "overrides": [], "out_dir": f"runs/compare-{preset}", "seeds": 1, "reseed_lm": False}


@flow(name="compare", log_prints=True, persist_result=True)
def compare_flow(preset: Preset = "cpu", backbones: list[BackboneName] = list(BACKBONES),  # noqa: B006
                 variants: list[Variant] = list(VARIANTS), n_labels: Optional[list[int]] = None,  # noqa: B006
                 overrides: Optional[list[str]] = None, out_dir: Optional[str] = None, seeds: int = 1,
                 reseed_lm: bool = False, results: Optional[str] = None) -> dict:
    """Run every cell at every seed (cached), then write and publish the comparison table and plot.

    Args:
        preset: Preset of every cell.
        backbones: Backbones compared.
        variants: full pipeline, no pretraining (random init), no adaptation.
        n_labels: Label budgets (empty = the preset's), e.g. [100, 300, 1000].
        overrides: section.field=value settings applied to every cell.
        out_dir: Output folder (default: runs/compare-PRESET).
        seeds: Seeds per cell: each draws the labeled sample and initialises the classifier; the table gives mean ± sd.
        reseed_lm: Also retrain the language models per seed (default: shared by all classifier seeds).
        results: A results file (e.g. RESULTS.md) whose marked section is rewritten from the report.
    """
    shown_out = out_dir or f"runs/compare-{preset}"
    cells = checked_grid(preset, list(backbones), list(variants), n_labels, overrides or [], shown_out, seeds,
                         reseed_lm)
    command = compare_command(preset, list(backbones), list(variants), n_labels, overrides or [], shown_out, seeds,
                              reseed_lm)
    return run_grid(cells, shown_out, command, results)


@flow(name="compare", log_prints=True, persist_result=True, validate_parameters=False)
def compare_cells_flow(cells: list[Cell], out_dir: str, command: str, results: Optional[str] = None) -> dict:
    """The same flow for a grid that is already built and checked (what `ulmfit compare` passes, after
    `checked_grid`): nothing is built or checked twice."""
    return run_grid(cells, out_dir, command, results)


def run_grid(cells: list[Cell], out_dir: str, command: str, results: Optional[str] = None) -> dict:
    """Every checked cell as a `compare-cell` subflow under the folder's lock, then the report."""
    out = Path(out_dir).expanduser().resolve()
    states, rows = {}, []
    with run_dir_lock(out):
        for cell in cells:
            summary = cell_flow(cell.name, cell.config, {stage: str(f) for stage, f in cell.folders.items()})
            states[cell.name] = {stage: info["state"] for stage, info in summary.items()}
            rows.append(cell_row(cell))
        report = write_report(out, rows, command)
        if results:
            update_results(results, report, command + f" --results {results}")
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
    print(markdown(summarize(pd.DataFrame(rows))))

"""The LSTM-vs-transformer comparison: a grid of runs and the table and plot they produce.

A cell is (backbone, variant[, label budget]); every cell is an ordinary run of the stages with
its own validated config and explicit stage folders, shared wherever the stage would be identical,
so a stage is trained once per backbone and adding a backbone computes only its own cells (the
stage store, `pipeline.store`, gives a cell any stage another compare or run already computed):

    out/gpt/pretrain          <- full, no_adapt          (trained on WikiText)
    out/gpt/pretrain-none     <- no_pretrain             (pretrain.epochs=0: random weights)
    out/gpt/adapt             <- full
    out/gpt/adapt-none        <- no_adapt                (adapt epochs 0: stage-1 weights, target vocab)
    out/gpt/adapt-from-random <- no_pretrain
    out/gpt/classify-<variant>[-<n>labels]     (and so for any stage registered after classify)
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.artifacts import atomic_dir, read_metrics
from pipeline.cards import frame_table
from pipeline.config import RunConfig, load_config
from pipeline.errors import ConfigError
from pipeline.stages.registry import stage_names

VARIANTS = {
    "full": [],
    "no_pretrain": ["pretrain.epochs=0"],
    "no_adapt": ["adapt.epochs=0", "adapt.frozen_epochs=0"],
}
# Folders of the stages a variant changes; every other stage gets a folder per cell.
_DIRS = {"full": {"pretrain": "pretrain", "adapt": "adapt"},
         "no_pretrain": {"pretrain": "pretrain-none", "adapt": "adapt-from-random"},
         "no_adapt": {"pretrain": "pretrain", "adapt": "adapt-none"}}
COLUMNS = ["backbone", "variant", "n_labels", "params", "pretrain_tokens_per_sec", "adapt_tokens_per_sec",
           "pretrain_perplexity", "adapt_perplexity", "objective", "test_accuracy", "test_size",
           "pretrain_seconds", "adapt_seconds", "classify_seconds"]


@dataclass(frozen=True)
class Cell:
    backbone: str
    variant: str
    n_labels: int | None
    config: RunConfig
    folders: dict[str, Path]  # stage name -> its folder

    @property
    def name(self) -> str:
        return f"{self.backbone}/{self.variant}" + (f"/{self.n_labels}labels" if self.n_labels else "")


def grid(preset: str, backbones: list[str], variants: list[str], n_labels: list[int] | None,
         overrides: list[str], out_dir: str | Path) -> list[Cell]:
    """Every (backbone, variant, label budget) cell with its validated config and stage folders."""
    from pipeline.backbones import get_backbone

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants or not backbones:
        raise ConfigError(f"compare needs backbones and variants; unknown variants {unknown}, known: {', '.join(VARIANTS)}")
    out, cells = Path(out_dir).expanduser().resolve(), []
    for backbone in backbones:
        get_backbone(backbone)
        for variant in variants:
            for n in n_labels or [None]:
                extra = VARIANTS[variant] + ([f"classify.n_labels={n}"] if n else [])
                cfg = load_config(preset, list(overrides) + [f"model.backbone={backbone}"] + extra)
                cells.append(Cell(backbone, variant, n, cfg, _folders(out / backbone, variant, n)))
    return cells


def _folders(root: Path, variant: str, n_labels: int | None) -> dict[str, Path]:
    own = f"-{variant}" + (f"-{n_labels}labels" if n_labels else "")
    return {stage: root / _DIRS[variant].get(stage, stage + own) for stage in stage_names()}


def cell_row(cell: Cell) -> dict:
    """One table row, read from the cell's stage artifacts (so cached cells report their real numbers)."""
    pre, ada, cla = (read_metrics(cell.folders[s]) for s in ("pretrain", "adapt", "classify"))
    return {"backbone": cell.backbone, "variant": cell.variant, "n_labels": cla["n_labels"],
            "params": pre["params"], "pretrain_tokens_per_sec": pre["train_tokens_per_sec"],
            "adapt_tokens_per_sec": ada["train_tokens_per_sec"], "pretrain_perplexity": pre["valid_perplexity"],
            "adapt_perplexity": ada["held_out_perplexity_after"], "objective": pre.get("objective", "causal"),
            "test_accuracy": cla["test_accuracy"], "test_size": cla["test_size"],
            "pretrain_seconds": pre["wall_seconds"], "adapt_seconds": ada["wall_seconds"],
            "classify_seconds": cla["wall_seconds"]}


def plot(table: pd.DataFrame) -> bytes:
    """Test accuracy per backbone, one bar per variant (and label budget)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = table.assign(series=table["variant"] + table["n_labels"].map(lambda n: f" ({n} labels)"))
    wide = table.pivot_table(index="backbone", columns="series", values="test_accuracy", sort=False)
    fig, ax = plt.subplots(figsize=(8, 4))
    wide.plot.bar(ax=ax, rot=0)
    ax.set(ylabel="test accuracy", xlabel="backbone", title="IMDb test accuracy by backbone and ablation")
    low = max(0.0, float(table["test_accuracy"].min()) - 0.1)
    ax.set_ylim(low, min(1.0, float(table["test_accuracy"].max()) + 0.05))
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def markdown(table: pd.DataFrame) -> str:
    shown = table.copy()
    for col in shown.columns:
        if col.endswith("_seconds") or col.endswith("_per_sec"):
            shown[col] = shown[col].round(0).astype(int)
    shown["test_accuracy"] = (100 * shown["test_accuracy"]).round(2)
    shown["pretrain_perplexity"] = shown["pretrain_perplexity"].round(1)
    shown["adapt_perplexity"] = shown["adapt_perplexity"].round(1)
    return frame_table(shown.rename(columns={"test_accuracy": "test_accuracy_%"}))


def write_report(out_dir: str | Path, rows: list[dict], command: str = "") -> Path:
    """compare.csv, compare.md and compare.png in `out_dir/report`, written atomically."""
    table = pd.DataFrame(rows, columns=COLUMNS)
    target = Path(out_dir).expanduser().resolve() / "report"
    with atomic_dir(target) as tmp:
        table.to_csv(tmp / "compare.csv", index=False)
        (tmp / "compare.png").write_bytes(plot(table))
        note = ("Perplexities: causal LMs report next-token perplexity; `masked` (bert) reports perplexity on "
                "the 15 % masked tokens, which is not comparable with it. Seconds and tokens/s are those of the "
                "run that computed the stage (a cached stage keeps its original numbers).")
        (tmp / "compare.md").write_text(f"# Backbone comparison\n\n{('`' + command + '`') if command else ''}\n\n"
                                        f"{markdown(table)}\n\n{note}\n\n![test accuracy](compare.png)\n")
        (tmp / "cells.json").write_text(json.dumps(rows, indent=2, default=str))
    return target

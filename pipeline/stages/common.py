"""Small pieces every stage uses: results, sampling, LM artifacts and cards."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import RunConfig, stage_config


@dataclass(frozen=True)
class StageResult:
    """What a stage hands downstream: where its artifact folder is and its headline metrics."""

    stage: str
    path: str
    metrics: dict


def sample_rows(n_rows: int, n: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded random sample of n rows (all rows if n is None), in original order."""
    if n is None or n >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=n, replace=False))


def state_to_cpu(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def lm_blob(model, encoder, arch: dict, cfg: RunConfig, stage: str, backbone: str) -> dict:
    """Everything needed to rebuild the LM: weights, vocab, tokenizer, architecture, the stage's config."""
    return {"kind": "lm", "stage": stage, "backbone": backbone, "arch": json.dumps(arch, default=str),
            "model_config": json.dumps(cfg.model.used()), "state_dict": state_to_cpu(model),
            "vocab": list(encoder.itos), "tokenizer": encoder.state(),
            "config_json": json.dumps(stage_config(cfg, stage))}


def blob_arch(blob: dict) -> dict:
    return json.loads(blob["arch"])


def markdown_table(rows: dict) -> str:
    lines = ["| metric | value |", "| --- | --- |"]
    for key, value in rows.items():
        shown = f"{value:,.4f}" if isinstance(value, float) else (f"{value:,}" if isinstance(value, int) else str(value))
        lines.append(f"| {key} | {shown} |")
    return "\n".join(lines)


def card(title: str, summary: str, metrics: dict, samples: dict[str, str] | None = None,
         history: pd.DataFrame | None = None) -> str:
    parts = [f"# {title}", "", summary, "", markdown_table(metrics)]
    if samples:
        parts += ["", "## Samples", ""] + [f"- *{p}* → {s}" for p, s in samples.items()]
    if history is not None and len(history):
        parts += ["", "## History", "", "![loss curves](history.png)", "", frame_to_markdown(history)]
    return "\n".join(parts) + "\n"


def frame_to_markdown(frame: pd.DataFrame) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def loss_plot(batch_losses: list[float], history: pd.DataFrame, title: str) -> bytes:
    """PNG of the smoothed training loss per batch, with validation loss at each epoch's end."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(range(1, len(batch_losses) + 1), batch_losses, label="training loss (smoothed)")
    if len(history) and "valid_loss" in history:
        ax.plot(history["batches_seen"], history["valid_loss"], "o-", label="validation loss")
    ax.set(xlabel="batch", ylabel="cross-entropy", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def out_path(out_dir: str | Path) -> Path:
    return Path(out_dir).expanduser().resolve()

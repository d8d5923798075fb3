"""What people read about a stage: markdown tables, the stage card, the loss-curve plot.

One table writer (`markdown_table`) serves the cards' metric, history and confusion tables and
the comparison report.
"""
from __future__ import annotations

import io
from typing import Any, Callable, Iterable

import pandas as pd


def markdown_table(columns: Iterable[Any], rows: Iterable[Iterable[Any]], fmt: Callable[[Any], str] = str) -> str:
    """A GitHub markdown table; every cell goes through `fmt`, the header through `str`."""
    columns = [str(c) for c in columns]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _metric_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metric_table(metrics: dict) -> str:
    return markdown_table(["metric", "value"], [(k, _metric_value(v)) for k, v in metrics.items()])


def frame_table(frame: pd.DataFrame) -> str:
    return markdown_table(frame.columns, frame.itertuples(index=False), _cell)


def confusion_table(classes: list[str], confusion: list[list[int]]) -> str:
    return markdown_table(["true \\ pred", *classes], ([c, *row] for c, row in zip(classes, confusion)))


def card(title: str, summary: str, metrics: dict, samples: dict[str, str] | None = None,
         history: pd.DataFrame | None = None) -> str:
    parts = [f"# {title}", "", summary, "", metric_table(metrics)]
    if samples:
        parts += ["", "## Samples", ""] + [f"- *{p}* → {s}" for p, s in samples.items()]
    if history is not None and len(history):
        parts += ["", "## History", "", "![loss curves](history.png)", "", frame_table(history)]
    return "\n".join(parts) + "\n"


def loss_plot(batch_losses: list[float], history: pd.DataFrame, title: str) -> bytes:
    """PNG of the smoothed training loss per batch, with validation loss at each epoch's end."""
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

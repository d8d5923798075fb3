"""The comparison's report: per-seed rows aggregated into mean ± sd, a table, a plot, and RESULTS.md.

    report/cells.csv    one row per cell and seed (pipeline.study.compare.cell_row)
    report/compare.csv  one row per (backbone, variant, label budget), plus a TF-IDF row per budget:
                        n seeds, mean and sd of test and probe accuracy, the LM budget columns
    report/compare.md   that table in markdown, with the command that made it
    report/compare.png  test accuracy vs labels (log x) with ±1 sd error bars, a line per
                        backbone x variant and the TF-IDF baseline (bars when there is one budget)
"""
from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pandas as pd

from pipeline.artifacts.cards import markdown_table
from pipeline.artifacts.stage_folder import atomic_dir, write_manifest

GROUP = ["backbone", "variant", "n_labels"]
BASELINE = "tfidf+lr"  # the baseline's `backbone` in the summary table
FIRST = ["params", "objective", "test_size"]  # the same for every seed of a group
MEAN = ["lm_tokens", "lm_pflops", "pretrain_perplexity", "adapt_perplexity", "lm_seconds", "classify_seconds"]
BEGIN, END = "<!-- compare-report:begin -->", "<!-- compare-report:end -->"


def _spread(values: pd.Series) -> tuple[float, float]:
    values = values.dropna()
    return (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0) if len(values) else (None, None)


def summarize(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd over seeds per cell, then one TF-IDF row per label budget (its seeds' labeled samples
    are the cells' own: the same for every backbone and variant)."""
    rows = []
    for key, group in cells.groupby(GROUP, sort=False, dropna=False):
        row = dict(zip(GROUP, key)) | {"seeds": len(group)}
        for col in ("test_accuracy", "probe_test_accuracy"):
            row[f"{col}_mean"], row[f"{col}_sd"] = _spread(group[col])
        row |= {c: group[c].iloc[0] for c in FIRST} | {c: float(group[c].mean()) for c in MEAN}
        rows.append(row)
    for n, group in cells.groupby("n_labels", sort=False):
        per_seed = group.drop_duplicates("seed")["tfidf_test_accuracy"]
        if per_seed.notna().any():
            mean, sd = _spread(per_seed)
            rows.append({"backbone": BASELINE, "variant": "-", "n_labels": n, "seeds": int(per_seed.notna().sum()),
                         "test_accuracy_mean": mean, "test_accuracy_sd": sd, "test_size": group["test_size"].iloc[0]})
    return pd.DataFrame(rows)


def _pct(mean, sd) -> str:
    return "–" if mean is None or pd.isna(mean) else f"{100 * mean:.1f} ± {100 * sd:.1f}"


def _num(value, fmt: str, scale: float = 1.0, unit: str = "") -> str:
    return "–" if value is None or pd.isna(value) else format(value / scale, fmt) + unit


def markdown(summary: pd.DataFrame) -> str:
    columns = ["backbone", "variant", "labels", "seeds", "test acc. % (mean ± sd)", "probe acc. %", "params",
               "LM tokens", "LM PFLOPs", "stage-1 ppl", "stage-2 ppl", "LM s", "classify s"]
    rows = [(r.backbone, r.variant, int(r.n_labels), int(r.seeds), _pct(r.test_accuracy_mean, r.test_accuracy_sd),
             _pct(r.get("probe_test_accuracy_mean"), r.get("probe_test_accuracy_sd")),
             _num(r.get("params"), ".2f", 1e6, " M"), _num(r.get("lm_tokens"), ".2f", 1e6, " M"),
             _num(r.get("lm_pflops"), ".3f"), _num(r.get("pretrain_perplexity"), ".1f"),
             _num(r.get("adapt_perplexity"), ".1f"), _num(r.get("lm_seconds"), ".0f"), _num(r.get("classify_seconds"), ".0f"))
            for _, r in summary.sort_values(["n_labels"], kind="stable").iterrows()]
    return markdown_table(columns, rows)


def plot(summary: pd.DataFrame) -> bytes:
    """Test accuracy vs labels (log x) with ±1 sd error bars; bars with error bars for one budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    budgets = sorted(summary["n_labels"].unique())
    series = summary.assign(series=summary["backbone"] + summary["variant"].map(lambda v: "" if v == "-" else f" / {v}"))
    if len(budgets) > 1:
        for name, group in series.groupby("series", sort=False):
            group = group.sort_values("n_labels")
            baseline = name == BASELINE
            ax.errorbar(group["n_labels"], 100 * group["test_accuracy_mean"], yerr=100 * group["test_accuracy_sd"],
                        label=name, capsize=3, marker="o", ls="--" if baseline else "-",
                        color="black" if baseline else None, lw=2 if baseline else 1.2)
        ax.set_xscale("log")
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set(xlabel="labeled training reviews (log scale)")
    else:
        ax.bar(range(len(series)), 100 * series["test_accuracy_mean"], yerr=100 * series["test_accuracy_sd"], capsize=3,
               color=["black" if b == BASELINE else f"C{i}" for i, b in enumerate(series["backbone"])])
        ax.set_xticks(range(len(series)), series["series"], rotation=30, ha="right", fontsize=8)
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.set(ylabel="IMDb test accuracy % (mean ± sd over seeds)", title="Test accuracy by backbone, ablation and labels")
    ax.grid(alpha=0.3)
    if len(budgets) > 1:
        ax.legend(fontsize=7, loc="lower right", ncol=2)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


NOTE = ("Mean ± sd over seeds (n = `seeds`); a seed draws the labeled sample, the validation hold-out and the "
        "classifier's initialisation, and every seed is tested on the same test reviews. `probe`: logistic "
        "regression on the frozen encoder's pooled features before fine-tuning; `tfidf+lr`: TF-IDF word 1-2-grams "
        "+ logistic regression on the same labeled samples; both choose C on the validation hold-out. LM tokens: "
        "tokens read by the language model in stages 1-2 (times epochs); PFLOPs = their training compute, counted "
        "per token on each architecture (3 x the forward's FLOPs, attention and decoder included: "
        "pipeline/training/flops.py); LM s: wall seconds of stages 1-2 in the run that computed them. "
        "Perplexities: causal LMs report next-token perplexity; a masked LM (bert) reports it over the 15 % masked "
        "tokens, not comparable with it.")


def write_report(out_dir: str | Path, rows: list[dict], command: str = "") -> Path:
    """cells.csv, compare.csv, compare.md and compare.png in `out_dir/report`, written atomically."""
    cells = pd.DataFrame(rows)
    summary = summarize(cells)
    target = Path(out_dir).expanduser().resolve() / "report"
    with atomic_dir(target) as tmp:
        cells.to_csv(tmp / "cells.csv", index=False)
        summary.to_csv(tmp / "compare.csv", index=False)
        (tmp / "compare.png").write_bytes(plot(summary))
        (tmp / "compare.md").write_text(f"# Backbone comparison\n\n{('`' + command + '`') if command else ''}\n\n"
                                        f"{markdown(summary)}\n\n{NOTE}\n\n![test accuracy](compare.png)\n")
        (tmp / "cells.json").write_text(json.dumps(rows, indent=2, default=str))
        write_manifest(tmp)  # marks the folder as the tool's: the next report may replace it
    return target


def update_results(results: str | Path, report: Path, command: str) -> Path:
    """Rewrite the marked section of a results file (RESULTS.md) from the report: the command, the
    table and the plot (copied to docs/ beside the file). Text outside the markers is left alone."""
    results = Path(results).expanduser().resolve()
    plot_copy = results.parent / "docs" / f"{report.parent.name}.png"
    plot_copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(report / "compare.png", plot_copy)
    shutil.copyfile(report / "compare.csv", plot_copy.with_suffix(".csv"))
    summary = pd.read_csv(report / "compare.csv")
    section = (f"{BEGIN}\n\n```bash\n{command}\n```\n\n{markdown(summary)}\n\n{NOTE}\n\n"
               f"![test accuracy vs labels]({plot_copy.relative_to(results.parent)})\n\n{END}")
    text = results.read_text() if results.exists() else ""
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _m: section, text, flags=re.S)
    else:
        text = (text.rstrip() + "\n\n" if text else "") + section + "\n"
    results.write_text(text)
    return results

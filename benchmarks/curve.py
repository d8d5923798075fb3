"""Issue 20's curve: classifier accuracy, linear probe and transfer gain against the LM tokens read.

Every row of `docs/curve.csv` is one stage-3 run: the LM tokens its encoder read (stage 1 + stage 2,
training tokens x epochs; 0 for the random-encoder twin), the labels, the classifier seed, the recipe,
and the accuracies. `--log` adds the rows of `benchmarks.tune` logs (tune.jsonl) to that file, replacing
rows of the same name; rows already there stay (their `source` says where each was measured). The
command then prints the markdown table of BENCHMARKS.md and draws `docs/curve.png`.

The transfer gain at a point is the transferred classifier's mean test accuracy minus the random twin's,
for the same labels and recipe. The twin has the default run's vocabulary; its accuracy does not depend
on LM tokens, since it read none.

usage: python -m benchmarks.curve --log runs/curve/tune.jsonl     # add a log's runs, then table + plot
       python -m benchmarks.curve                                 # table + plot from docs/curve.csv
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from pipeline.config import load_config
from pipeline.stages.classify_data import classify_seed

COLUMNS = ["name", "lm_tokens", "n_labels", "seed", "recipe", "valid_accuracy", "test_accuracy",
           "probe_valid_accuracy", "probe_test_accuracy", "tfidf_test_accuracy", "adapt_ppl", "source"]
PROBE_ONLY = "probe only"  # epochs_per_phase all 0: the stage only scores its same-sample baselines
# Settings that pick the sample, not the recipe: runs that differ only in these are seeds of one cell.
NOT_RECIPE = ("classify.seed", "classify.n_labels", "classify.baselines", "classify.n_valid", "classify.n_test")


def recipe_of(overrides: list[str], cfg) -> str:
    if sum(cfg.classify.epochs_per_phase) == 0:
        return PROBE_ONLY
    own = sorted(o for o in overrides if o.startswith("classify.") and not o.startswith(NOT_RECIPE))
    return " ".join(own) or "preset"


def curve_row(tune_row: dict, source: str) -> dict:
    """One `benchmarks.tune` log line as a curve row; the config is rebuilt from the row's overrides."""
    cfg = load_config(tune_row.get("preset", "cpu"), tune_row["overrides"])
    tokens = tune_row["lm_train_tokens"]
    read = tokens["pretrain"] * cfg.pretrain.epochs + tokens["adapt"] * (cfg.adapt.epochs + cfg.adapt.frozen_epochs)
    recipe = recipe_of(tune_row["overrides"], cfg)
    return {"name": tune_row["name"], "lm_tokens": read, "n_labels": cfg.classify.n_labels,
            "seed": classify_seed(cfg), "recipe": recipe,
            "valid_accuracy": None if recipe == PROBE_ONLY else tune_row["valid_accuracy"],
            "test_accuracy": None if recipe == PROBE_ONLY else tune_row["test_accuracy"],
            "probe_valid_accuracy": tune_row.get("probe_valid_accuracy"),
            "probe_test_accuracy": tune_row.get("probe_test_accuracy"),
            "tfidf_test_accuracy": tune_row.get("tfidf_test_accuracy"), "adapt_ppl": tune_row["adapt_ppl"],
            "source": source}


def add_logs(frame: pd.DataFrame, logs: list[Path]) -> pd.DataFrame:
    new = [curve_row(json.loads(line), str(log)) for log in logs for line in log.read_text().splitlines() if line]
    if not new:
        return frame
    kept = frame[~frame["name"].isin({r["name"] for r in new})]
    return pd.concat([kept, pd.DataFrame(new, columns=COLUMNS)], ignore_index=True)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One line per (labels, recipe, LM tokens): mean and sd over seeds, and the gain over the twin."""
    grouped = frame.groupby(["n_labels", "recipe", "lm_tokens"], sort=True)
    table = grouped.agg(seeds=("seed", "nunique"), test_mean=("test_accuracy", "mean"),
                        test_sd=("test_accuracy", "std"), valid_mean=("valid_accuracy", "mean"),
                        probe_mean=("probe_test_accuracy", "mean"), tfidf_mean=("tfidf_test_accuracy", "mean"),
                        adapt_ppl=("adapt_ppl", "mean")).reset_index()
    table["se2"] = table["test_sd"] ** 2 / table["seeds"]  # squared standard error of the mean
    twin = table[table["lm_tokens"] == 0].set_index(["n_labels", "recipe"])
    gains, ses = [], []
    for r in table.itertuples():
        key = (r.n_labels, r.recipe)
        has_twin = r.lm_tokens > 0 and key in twin.index
        gains.append(r.test_mean - twin.loc[key, "test_mean"] if has_twin else float("nan"))
        ses.append((r.se2 + twin.loc[key, "se2"]) ** 0.5 if has_twin else float("nan"))
    table["gain"], table["gain_se"] = gains, ses  # transferred minus twin, and its standard error
    return table


def _pct(mean: float, sd: float | None = None) -> str:
    if pd.isna(mean):
        return "–"
    return f"{100 * mean:.2f}" + ("" if sd is None or pd.isna(sd) else f" ± {100 * sd:.2f}")


def markdown(table: pd.DataFrame) -> str:
    lines = ["| labels | recipe | LM tokens read | IMDb held-out ppl | seeds | classifier valid (mean) | "
             "classifier test (mean ± sd) | gain over the random twin (± se) | probe test | TF-IDF test |",
             "| --- |" * 1 + " --- |" * 9]
    for r in table.itertuples():
        tokens = "0 (random twin)" if r.lm_tokens == 0 else f"{r.lm_tokens / 1e6:.2f} M"
        gain = "–" if pd.isna(r.gain) else f"{100 * r.gain:+.2f}" + ("" if pd.isna(r.gain_se) else
                                                                        f" ± {100 * r.gain_se:.2f}")
        lines.append(f"| {r.n_labels:,} | {r.recipe} | {tokens} | {r.adapt_ppl:,.1f} | {r.seeds} | "
                     f"{_pct(r.valid_mean)} | {_pct(r.test_mean, r.test_sd)} | {gain} | {_pct(r.probe_mean)} | "
                     f"{_pct(r.tfidf_mean)} |")
    return "\n".join(lines)


def _panel(ax, at: pd.DataFrame, title: str) -> None:
    from matplotlib.ticker import FuncFormatter

    for i, (recipe, cell) in enumerate(at[at["recipe"] != PROBE_ONLY].groupby("recipe")):
        lm, twin, color = cell[cell["lm_tokens"] > 0], cell[cell["lm_tokens"] == 0], f"C{i}"
        ax.errorbar(lm["lm_tokens"] / 1e6, 100 * lm["test_mean"], yerr=100 * lm["test_sd"].fillna(0),
                    marker="o", capsize=3, color=color, label=f"classifier ({recipe})")
        for t in twin.itertuples():  # the twin read no LM tokens: a band at every x
            sd = 0 if pd.isna(t.test_sd) else t.test_sd
            ax.axhspan(100 * (t.test_mean - sd), 100 * (t.test_mean + sd), alpha=0.15, color=color,
                       label=f"random twin ({recipe}), mean ± sd")
    probes = at.groupby("lm_tokens")["probe_mean"].mean().dropna()
    ax.plot(probes[probes.index > 0].index / 1e6, 100 * probes[probes.index > 0].values, "s--", color="C3",
            label="linear probe (frozen encoder)")
    if 0 in probes.index:
        ax.axhline(100 * probes[0], color="C3", linestyle="-.", alpha=0.6, label="linear probe, random encoder")
    tfidf = at["tfidf_mean"].mean()
    if not pd.isna(tfidf):
        ax.axhline(100 * tfidf, color="black", linestyle=":", label=f"TF-IDF + LR ({100 * tfidf:.1f} %)")
    ax.set(xscale="log", xlabel="LM tokens read (stages 1 + 2, millions)", ylabel="IMDb test accuracy (%)",
           title=title)
    for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
        axis(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.16), ncol=2, frameon=False)


def plot(table: pd.DataFrame, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    labels = sorted(table["n_labels"].unique())
    fig, axes = plt.subplots(1, len(labels), figsize=(5.5 * len(labels), 5.2), squeeze=False)
    for ax, n in zip(axes[0], labels):
        _panel(ax, table[table["n_labels"] == n], f"{n:,} labels")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, action="append", default=[], help="a benchmarks.tune log (repeatable)")
    parser.add_argument("--csv", type=Path, default=Path("docs/curve.csv"))
    parser.add_argument("--png", type=Path, default=Path("docs/curve.png"))
    args = parser.parse_args(argv)
    frame = pd.read_csv(args.csv) if args.csv.exists() else pd.DataFrame(columns=COLUMNS)
    frame = add_logs(frame, args.log)
    if args.log:
        frame.sort_values(["n_labels", "recipe", "lm_tokens", "seed"]).to_csv(args.csv, index=False)
    table = summary(frame)
    plot(table, args.png)
    text = markdown(table)
    print(text)
    return text


if __name__ == "__main__":
    main()

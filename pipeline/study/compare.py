"""The LSTM-vs-transformer comparison: a grid of runs, one row per cell and seed.

A cell is (backbone, variant, label budget, seed); every cell is an ordinary run of the stages
with its own validated config and explicit stage folders, shared wherever the stage would be
identical, so a stage is trained once per backbone and adding a backbone, a label budget or a
seed computes only the new cells (the stage store, `pipeline.artifacts.store`, also gives a cell any stage
another compare or run already computed):

    out/gpt/pretrain          <- full, no_adapt          (trained on WikiText)
    out/gpt/pretrain-none     <- no_pretrain             (pretrain.epochs=0: random weights)
    out/gpt/adapt             <- full
    out/gpt/adapt-none        <- no_adapt                (adapt epochs 0: stage-1 weights, target vocab)
    out/gpt/adapt-from-random <- no_pretrain
    out/gpt/classify-<variant>-<n>labels-seed<s>   (and so for any stage registered after classify)

Seeds. Seed s sets `classify.seed`: the labeled sample, the validation hold-out, the classifier's
initialisation and batch order. The test sample comes from the run's seed, so every cell and
seed is scored on the same test reviews, and the LM stages are shared by all classifier seeds.
With `reseed_lm`, seed s is the run's seed instead: the LM stages are trained once per seed too
(their folders get a `-seed<s>` suffix) and the test sample changes with the seed. The first
seed is the preset's own, so a one-seed compare shares its stages with a plain `ulmfit run`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.artifacts.stage_folder import read_metrics
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
LM_STAGES = ("pretrain", "adapt")


@dataclass(frozen=True)
class Cell:
    backbone: str
    variant: str
    n_labels: int | None
    seed: int
    config: RunConfig
    folders: dict[str, Path]  # stage name -> its folder

    @property
    def name(self) -> str:
        labels = f"/{self.n_labels}labels" if self.n_labels else ""
        return f"{self.backbone}/{self.variant}{labels}/seed{self.seed}"


def checked_grid(preset: str, backbones: list[str], variants: list[str], n_labels: list[int] | None,
                 overrides: list[str], out_dir: str, seeds: int = 1, reseed_lm: bool = False) -> list[Cell]:
    """Every cell of the grid (`pipeline.study.compare.grid`), each one's inputs and outputs checked
    (`pipeline.validate`) before the first stage starts; cells that share a stage share its check."""
    from pipeline.validate import check_run

    out = Path(out_dir).expanduser().resolve()
    cells = grid(preset, backbones, variants, n_labels, overrides, out, seeds, reseed_lm)
    if any(cell.config.model.direction == "both" for cell in cells):  # a cell runs one chain of stages
        raise ConfigError("compare runs one direction per cell: model.direction=both is for `ulmfit run` "
                          "(forward, backward and their ensemble in one run folder)")
    passed: set[str] = set()  # cells that share a stage's data share its check
    for cell in cells:
        check_run(cell.config, out, cell.folders, passed)
    return cells


def compare_command(preset: str, backbones: list[str], variants: list[str], n_labels: list[int] | None,
                    overrides: list[str], out_dir: str, seeds: int = 1, reseed_lm: bool = False) -> str:
    """The `ulmfit compare` command line that makes this grid (written into the report)."""
    return " ".join(["ulmfit compare", f"--preset {preset}", f"--backbones {','.join(backbones)}",
                     f"--variants {','.join(variants)}"]
                    + ([f"--n-labels {','.join(map(str, n_labels))}"] if n_labels else [])
                    + ([f"--seeds {seeds}"] if seeds > 1 else []) + (["--reseed-lm"] if reseed_lm else [])
                    + [f"--set {o}" for o in overrides] + [f"--out {out_dir}"])


def seed_list(preset: str, overrides: list[str], seeds: int) -> list[int]:
    if seeds < 1:
        raise ConfigError(f"compare --seeds must be at least 1, not {seeds}")
    base = load_config(preset, list(overrides)).seed
    return [base + i for i in range(seeds)]


def grid(preset: str, backbones: list[str], variants: list[str], n_labels: list[int] | None,
         overrides: list[str], out_dir: str | Path, seeds: int = 1, reseed_lm: bool = False) -> list[Cell]:
    """Every (seed, backbone, variant, label budget) cell with its validated config and stage folders,
    seed by seed (a first pass over every cell finishes before a second seed starts)."""
    from pipeline.models.backbones import get_backbone

    if not backbones:
        raise ConfigError("compare needs at least one backbone (--backbones), e.g. awd_lstm,gpt")
    if not variants:
        raise ConfigError(f"compare needs at least one variant (--variants) of: {', '.join(VARIANTS)}")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    # A budget, backbone or variant named twice is one cell, not the same work twice.
    backbones, variants = list(dict.fromkeys(backbones)), list(dict.fromkeys(variants))
    n_labels = list(dict.fromkeys(n_labels)) if n_labels else n_labels
    out, cells = Path(out_dir).expanduser().resolve(), []
    for i, seed in enumerate(seed_list(preset, overrides, seeds)):
        seeded = ([f"seed={seed}"] if reseed_lm else [f"classify.seed={seed}"]) if i else []
        for backbone in backbones:
            get_backbone(backbone)
            for variant in variants:
                for n in n_labels or [None]:
                    extra = VARIANTS[variant] + ([f"classify.n_labels={n}"] if n else []) + seeded
                    cfg = load_config(preset, list(overrides) + [f"model.backbone={backbone}"] + extra)
                    folders = _folders(out / backbone, variant, n, seed, reseed_lm)
                    cells.append(Cell(backbone, variant, n, seed, cfg, folders))
    return cells


def _folders(root: Path, variant: str, n_labels: int | None, seed: int, reseed_lm: bool) -> dict[str, Path]:
    lm_suffix = f"-seed{seed}" if reseed_lm else ""
    own = f"-{variant}" + (f"-{n_labels}labels" if n_labels else "") + f"-seed{seed}"
    return {stage: root / (_DIRS[variant][stage] + lm_suffix if stage in _DIRS[variant] else stage + own)
            for stage in stage_names()}


def cell_row(cell: Cell) -> dict:
    """One row per cell and seed, read from its stage artifacts (cached cells report their real numbers).

    The budget columns say what the LM stages cost: `lm_tokens` counts the training tokens the
    language model read in stages 1-2 (tokens x epochs); `lm_seconds` is their wall time in the run
    that computed them; `lm_pflops` is their training compute, counted per token on the architecture
    (`pipeline.training.flops`: 3 x the forward's FLOPs, attention and the decoder included), the measure the
    backbones are matched on. Stages written before it was recorded fall back to 6 x parameters x tokens."""
    pre, ada, cla = (read_metrics(cell.folders[s]) for s in ("pretrain", "adapt", "classify"))
    lm_tokens = sum(m["train_tokens"] * m["epochs"] for m in (pre, ada))
    return {"backbone": cell.backbone, "variant": cell.variant, "n_labels": cla["n_labels"], "seed": cell.seed,
            "test_accuracy": cla["test_accuracy"], "probe_test_accuracy": cla.get("probe_test_accuracy"),
            "tfidf_test_accuracy": cla.get("tfidf_test_accuracy"), "test_size": cla["test_size"],
            "params": pre["params"], "lm_tokens": lm_tokens, "lm_pflops": _lm_flops(pre, ada) / 1e15,
            "pretrain_perplexity": pre["valid_perplexity"], "adapt_perplexity": ada["held_out_perplexity_after"],
            "objective": pre.get("objective", "causal"),
            "lm_seconds": pre["wall_seconds"] + ada["wall_seconds"], "classify_seconds": cla["wall_seconds"]}


def _lm_flops(*lm_stages: dict) -> float:
    return sum(m.get("train_flops", 6 * m["params"] * m["train_tokens"] * m["epochs"]) for m in lm_stages)

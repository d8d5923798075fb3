"""Typed, frozen, validated configuration: one model per stage, presets as TOML data.

Defaults are the paper's / fastai's full-scale values; presets (`pipeline/presets/*.toml`)
only say what differs. Any field can be overridden with `section.field=value`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from pipeline.config_base import Frozen
from pipeline.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"



# Above this a learning rate only diverges (Adam moves each weight by about lr per step); far above it
# torch cannot even hold it (1e308 overflows float32).
MAX_LR = 10.0
# pretrain.valid_split: the valid split where the data has one, else held-out training articles
VALID_AUTO = "auto"


class ModelConfig(Frozen):
    """The backbone is one setting. Each backbone's registry entry (pipeline.models.backbones) owns a size
    model, so the config has one section per registered backbone, `[model.<name>]` in a preset or
    `--set model.<name>.<field>=...`; only the chosen backbone's section is used."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True, allow_inf_nan=False, validate_default=True)

    backbone: str = Field("awd_lstm", description="Backbone registry entry (pipeline.models.backbones): awd_lstm, gpt (causal transformer), bert (masked-LM transformer), ...")
    drop_mult: float = Field(1.0, ge=0, description="Multiplier applied to every dropout of the backbone.")
    direction: Literal["forward", "backward", "both"] = Field("forward", description="Reading direction of the language models and the classifier: forward, backward (each document's tokens reversed, its leading bos kept first), or both: a forward and a backward chain of every stage (folders <stage> and <stage>-backward) and an ensemble averaging the two classifiers' probabilities (<run>/ensemble/; ULMFiT's best IMDb result). both doubles the work of every stage.")

    @model_validator(mode="before")
    @classmethod
    def _size_sections(cls, data: Any) -> Any:
        """Validate a section per registered backbone (defaults where absent); refuse any other key."""
        if not isinstance(data, dict):
            return data
        from pipeline.models.backbones import REGISTRY  # the registry imports this module

        own = set(cls.model_fields)
        unknown = sorted(k for k in data if k not in own and (k not in REGISTRY or REGISTRY[k].sizes is None))
        if unknown:
            raise PydanticCustomError("model_section", "unknown key(s) {keys}; backbones with size sections: {known}",
                                      {"keys": unknown, "known": sorted(n for n, b in REGISTRY.items() if b.sizes)})
        out, problems = {k: v for k, v in data.items() if k in own}, []
        for name, backbone in REGISTRY.items():
            if backbone.sizes is None:
                continue
            try:
                out[name] = backbone.sizes.model_validate(data.get(name, {}))
            except ValidationError as err:
                problems += [".".join([name, *map(str, e["loc"])]) + f": {e['msg']}" for e in err.errors()]
        if problems:
            raise PydanticCustomError("backbone_sizes", "{problems}", {"problems": problems})
        return out

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        from pipeline.models.backbones import REGISTRY

        if name not in REGISTRY:
            raise ValueError(f"unknown backbone {name!r}; available: {', '.join(sorted(REGISTRY))}")
        return name

    def sizes(self) -> BaseModel | None:
        """The chosen backbone's size section (None for a backbone that has none)."""
        return (self.model_extra or {}).get(self.backbone)

    def lr_mult(self) -> float:
        """The chosen backbone's multiplier of every stage's learning rates (1 for a backbone without a size section)."""
        sizes = self.sizes()
        return sizes.lr_mult if sizes is not None else 1.0

    def used(self) -> dict:
        """What results depend on: the backbone name, drop_mult, the direction and only the chosen backbone's sizes."""
        sizes = self.sizes()
        return {"backbone": self.backbone, "drop_mult": self.drop_mult, "direction": self.direction,
                "sizes": sizes.model_dump() if sizes is not None else None}


class TokenizerConfig(Frozen):
    kind: Literal["spacy", "wordpiece", "bpe"] = Field("spacy", description="spacy: word-level (spaCy with fastai's rules), vocabulary rebuilt per stage; wordpiece / bpe: a Hugging Face subword tokenizer (WordPiece, byte-level BPE) trained on the stage-1 corpus (pretrain.max_vocab pieces) and reused by stages 2-3.")
    lang: str = Field("en", description="spaCy language code.")
    n_workers: int = Field(2, ge=0, description="Tokenizer processes (0 = in-process). Not part of cache keys.")


class _LMStage(Frozen):
    min_freq: int = Field(3, ge=1, description="Minimum count for a token to enter the vocabulary.")
    max_vocab: int = Field(60000, ge=16, description="Vocabulary size cap (special tokens included).")
    bs: int = Field(64, gt=0, description="Batch size (parallel token streams).")
    bptt: int = Field(70, gt=1, description="Back-propagation-through-time window in tokens.")
    wd: float = Field(0.1, ge=0, description="Weight decay.")
    schedule: Literal["one_cycle", "stlr"] = Field("one_cycle", description="LR schedule.")
    max_docs: int | None = Field(None, gt=1, description="Use a random sample of this many training documents (None = all); sampled before tokenization.")
    max_valid_docs: int | None = Field(None, gt=0, description="Cap on held-out documents used for perplexity (None = all).")


class PretrainConfig(_LMStage):
    corpus: str = Field("wikitext-103", description="Registry name of the Wikipedia corpus.")
    valid_split: str | None = Field(VALID_AUTO, description="Split for validation perplexity. \"auto\": the corpus's \"valid\" split where the data folder has it, else max_valid_docs held-out training articles (fast.ai's WikiText archives have no valid split); a split name: that split, an error if missing; None: always hold out training articles. metrics.json's valid_source says which was used.")
    epochs: int = Field(10, ge=0, description="Training epochs; 0 keeps the random initialisation (the 'no pretraining' ablation).")
    lr: float = Field(5e-3, gt=0, le=MAX_LR, description="Peak learning rate.")
    init_from: str | None = Field(None, description="Seed stage 1 with published weights: a registered model (wt103-fwd: fastai's WikiText-103 AWD-LSTM, downloaded once; model.direction=backward takes wt103-bwd), a local folder of fastai's model-zoo files (*.pth + *.pkl) for awd_lstm, or a local Hugging Face checkpoint folder (config.json, weights, tokenizer.json) for gpt/bert. The checkpoint's architecture and vocabulary replace the preset's. With epochs=0, stage 1 trains nothing and only evaluates.")


class AdaptConfig(_LMStage):
    corpus: str = Field("imdb", description="Registry name or path to the target-domain text.")
    splits: list[str] = Field(["train", "unsup"], description="Registry splits used as LM text.")
    include_test: bool = Field(False, description="Also use the test split's text. Off: it leaks the test set into the LM.")
    text_col: str = Field("text", description="Text column for a user's file.")
    valid_frac: float = Field(0.1, gt=0, lt=1, description="Fraction of documents held out for perplexity.")
    frozen_epochs: int = Field(1, ge=0, description="Epochs training only the last layer group (embeddings+decoder).")
    epochs: int = Field(10, ge=0, description="Epochs with all layers unfrozen and discriminative LRs; 0 with frozen_epochs 0 = the 'no adaptation' ablation.")
    lr: float = Field(2e-3, gt=0, le=MAX_LR, description="Peak LR of the last layer group when unfrozen.")
    frozen_lr: float = Field(2e-2, gt=0, le=MAX_LR, description="Peak LR of the frozen phase.")
    lr_decay: float = Field(2.6, ge=1, description="Discriminative LR: each lower layer group gets lr / lr_decay.")


class ClassifyConfig(Frozen):
    corpus: str = Field("imdb", description="Registry name or path to labeled training data.")
    test_corpus: str | None = Field(None, description="Path to labeled test data; None = the registry's test split.")
    text_col: str = Field("text", description="Text column.")
    label_col: str = Field("label", description="Label column.")
    n_labels: int | None = Field(None, gt=1, description="Balanced subset of labeled training examples (None = all). The low-label regime is ULMFiT's point.")
    n_valid: int = Field(1000, gt=1, description="Training examples (disjoint from n_labels) held out for per-epoch validation.")
    n_test: int | None = Field(None, gt=1, description="Balanced test sample size (None = the whole test set).")
    epochs_per_phase: list[int] = Field([1, 1, 1, 2], description="Gradual unfreezing: phase i trains the last i+1 layer groups; the last phase trains all.")
    lrs: list[float] = Field([2e-2, 1e-2, 5e-3, 1e-3], description="Peak LR (top group) of each phase.")
    lr_decay: float = Field(2.6, ge=1, description="Discriminative LR factor between layer groups.")
    min_steps: int | None = Field(None, gt=0, description="Few labels: when the schedule would take fewer optimizer steps than this, every phase's epochs are multiplied by the same whole factor until it takes at least this many (the schedule's shape is kept). None = epochs_per_phase as given. metrics.json records the epochs and steps trained.")
    schedule: Literal["one_cycle", "stlr"] = Field("one_cycle", description="LR schedule within each phase.")
    bs: int = Field(64, gt=0, description="Batch size (reviews).")
    bptt: int = Field(72, gt=1, description="Chunk length: the LSTM reads a review in chunks of this many tokens carrying its state (BPT3C); a transformer encodes each chunk separately and pools over all of them.")
    max_len: int = Field(1440, gt=1, description="Only the last max_len tokens of a review feed the pooling (BPT3C); the whole review still runs through the encoder's state.")
    max_tokens: int | None = Field(None, gt=1, description="Truncate reviews to N tokens (None = whole reviews; see truncation).")
    truncation: Literal["head", "head_tail"] = Field("head", description="With max_tokens: keep the first N tokens (head), or the first N/4 and the last 3N/4 (head_tail, Sun et al. 2019).")
    pooling: Literal["auto", "concat", "last", "first", "mean", "max"] = Field("auto", description="How token states become one vector: concat = [last, max, mean] (ULMFiT), last token, first token ([CLS]-style), mean, max (over each feature); auto = the backbone's default (awd_lstm/gpt: concat, bert: mean). awd_lstm supports only concat.")
    head: Literal["ulmfit", "lp_ft"] = Field("ulmfit", description="The classifier head on the pooled features: ulmfit = BatchNorm + dropout + linear (50 hidden units) + BatchNorm + dropout + linear, randomly initialised; lp_ft = linear probing then fine-tuning (Kumar et al. 2022): a fixed standardisation (the training reviews' feature mean and SD) + dropout + one linear layer, set before fine-tuning to the linear probe's logistic regression (C chosen on validation) on the frozen encoder's features (pipeline/models/heads.py).")
    wd: float = Field(0.1, ge=0, description="Weight decay.")
    drop_mult: float = Field(1.0, ge=0, description="Dropout multiplier for the classifier: the AWD-LSTM's ULMFiT dropouts, a transformer encoder's dropouts, and the head's (fastai's IMDb tutorial uses 0.5).")
    seed: int | None = Field(None, description="Seed of the labeled sample, the validation hold-out, the classifier's initialisation and batch order (None = the run's seed). The test sample always comes from the run's seed, so classifiers of different seeds are scored on the same reviews; `ulmfit compare --seeds` varies this one.")
    baselines: bool = Field(True, description="Also score, on exactly the same samples, TF-IDF (word 1-2-grams) + logistic regression and a linear probe (logistic regression on the frozen encoder's pooled features before fine-tuning), each with C chosen on the validation hold-out: the bar the fine-tuned classifier has to clear.")
    recompute_bn_stats: bool = Field(True, description="Before each evaluation, re-estimate the head's BatchNorm statistics over the training examples with the current weights (pipeline/training/bn_stats.py). Off = running averages from training, which mislead when pooled features barely vary between reviews (small or barely trained LMs) or after few steps.")

    @model_validator(mode="after")
    def _phases_match(self):
        if len(self.epochs_per_phase) != len(self.lrs) or not self.lrs:
            raise ValueError("epochs_per_phase and lrs must be non-empty and of the same length")
        if any(e < 0 for e in self.epochs_per_phase) or any(not 0 < lr <= MAX_LR for lr in self.lrs):
            raise ValueError(f"epochs must be >= 0 and learning rates > 0 and <= {MAX_LR:g}")
        return self


class RunConfig(Frozen):
    preset: str = Field("full", description="Preset these values started from.")
    data_dir: str | None = Field(None, description="Data directory (default: $ULMFIT_DATA_DIR, else ~/.cache/ulmfit-flow/data).")
    cache_dir: str | None = Field(None, description="Token cache (default: $ULMFIT_CACHE_DIR, else ~/.cache/ulmfit-flow).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA with mixed precision when present, else CPU.")
    seed: int = Field(42, description="Random seed for sampling and initialisation.")
    nproc: int = Field(1, ge=1, description="Data-parallel processes per stage (torchrun + DDP; one per GPU, gloo on CPU). Batch sizes stay global (split over the processes). Not part of cache keys.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="Arithmetic of training and evaluation: fp32; bf16 = autocast (float32 weights, bf16 matmuls/LSTM/attention; fp16 with loss scaling on GPUs without bf16); auto = bf16 on GPUs, and on CPUs with native bf16 for backbones measured faster at <= 1 % validation-loss difference (BENCHMARKS.md). Part of cache keys.")
    compile: bool = Field(False, description="torch.compile the gpt/bert backbones on CUDA (ignored on CPU and for awd_lstm). Not part of cache keys.")
    # a factory: ModelConfig's validation reads the backbone registry, which imports this module
    model: ModelConfig = Field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = TokenizerConfig()
    pretrain: PretrainConfig = PretrainConfig()
    adapt: AdaptConfig = AdaptConfig()
    classify: ClassifyConfig = ClassifyConfig()

    @model_validator(mode="after")
    def _batches_split(self):
        # Batch sizes are global and split evenly over the nproc processes (see pipeline.training.ranks).
        for name, section in self:
            bs = getattr(section, "bs", None)
            if bs is not None and bs % self.nproc:
                raise ValueError(f"{name}.bs={bs} is not divisible by nproc={self.nproc}")
        return self


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def parse_override(item: str) -> tuple[list[str], Any]:
    """`classify.lrs=[0.01,0.005]` -> (['classify', 'lrs'], [0.01, 0.005]). Values are JSON, else strings."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form section.field=value")
    key, raw = item.split("=", 1)
    if not _KEY.fullmatch(key.strip()):
        raise ConfigError(f"override {item!r}: {key.strip()!r} is not a section.field name")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def _set_nested(tree: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        node = tree.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {part} is not a section")
        tree = node
    tree[path[-1]] = value


def load_config(preset: str = "cpu", overrides: list[str] | None = None) -> RunConfig:
    tree = preset_tree(preset)
    tree["preset"] = preset
    for item in overrides or []:
        _set_nested(tree, *parse_override(item))
    return validate_config(tree)


def preset_tree(preset: str, _seen: tuple[str, ...] = ()) -> dict:
    """A preset's settings. A preset that starts with `extends = "<preset>"` holds only what it changes: its
    sections are merged into the other preset's, key by key (so the two cannot drift apart)."""
    path = PRESET_DIR / f"{preset}.toml"
    if not path.exists():
        raise ConfigError(f"unknown preset {preset!r}; available: {', '.join(available_presets())}")
    tree = tomllib.loads(path.read_text())
    base = tree.pop("extends", None)
    if base is None:
        return tree
    if base in _seen + (preset,):
        chain = " -> ".join(_seen + (preset, base))
        raise ConfigError(f"preset {(_seen + (preset,))[0]!r}: `extends` goes round in a circle ({chain})")
    return _merged(preset_tree(base, _seen + (preset,)), tree)


def _merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def validate_config(tree: dict) -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"invalid configuration: {'; '.join(_problems(err))}") from None


def _problems(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        if e["type"] == "backbone_sizes":  # each problem already names its field inside the section
            out += [f"{where}.{problem}" for problem in e["ctx"]["problems"]]
        else:
            out.append(f"{where}: {e['msg']}")
    return out


def stage_config(cfg: RunConfig, stage: str) -> dict:
    """What a stage's result depends on (its cache key input): its own section (the RunConfig section
    named after it, if any) plus the model, tokenizer settings and seed. Worker counts, paths, nproc
    and compile are left out: they change how fast a stage runs, not what it computes (up to
    floating-point and batch-sharding noise)."""
    tok = cfg.tokenizer.model_dump(exclude={"n_workers"})
    section = getattr(cfg, stage, None)
    return {"stage": stage, "seed": cfg.seed, "precision": cfg.precision, "model": cfg.model.used(),
            "tokenizer": tok, stage: section.model_dump() if isinstance(section, BaseModel) else None}

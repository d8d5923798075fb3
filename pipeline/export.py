"""`ulmfit export`: a trained model out of the tool, into a standard format.

    hf    the run's last language model (stage 2, adapted) of a transformer backbone, as a folder that
          `transformers.AutoModelForCausalLM` / `AutoModelForMaskedLM` and `AutoTokenizer` load with no
          code of ours: config.json, model.safetensors, tokenizer.json and tokenizer_config.json. The
          tokenizer adds the xxbos id in front of a text, as the stages did.

The output folder is written atomically, and an existing folder that is not empty is refused (nothing
is overwritten). The run's model.pt is verified against its manifest first: a damaged file is one
error line.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.artifacts import MANIFEST, atomic_dir, load_model_file, verify_folder
from pipeline.backbones import get_backbone
from pipeline.errors import ArtifactError, ConfigError
from pipeline.stages.registry import REGISTRY

FORMATS = ("hf",)


def export(run: str | Path, fmt: str, out: str | Path) -> Path:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: one of {', '.join(FORMATS)}")
    if not str(out).strip():
        raise ConfigError("--out '': an empty folder name; name a new folder")
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty folder; not overwriting it: choose a new folder")
    return export_hf(last_stage_folder(run, "lm"), out)


def last_stage_folder(run: str | Path, kind: str) -> Path:
    """The folder of the run's last registered stage whose model.pt holds a `kind` model, verified."""
    run = Path(run).expanduser().resolve()
    stages = [name for name, stage in REGISTRY.items() if stage.model_kind == kind]
    for name in reversed(stages):
        if (run / name / MANIFEST).exists():
            verify_folder(run / name)  # a damaged model.pt is named in one line
            return run / name
    raise ArtifactError(f"{run}: no finished {kind} stage ({', '.join(stages)}) in this run directory; "
                        "run `ulmfit run` first")


def export_hf(folder: Path, out: Path) -> Path:
    saved = load_model_file(folder, expect_kind="lm")
    backbone = get_backbone(saved.backbone)
    if backbone.save_pretrained is None:
        raise ConfigError(f"{folder}: the {saved.backbone} backbone has no transformers equivalent; "
                          "--format hf exports the gpt and bert language models")
    from pipeline.text import encoder_from_state

    encoder = encoder_from_state(saved.tokenizer, saved.vocab)
    if not hasattr(encoder, "tokenizer"):
        raise ConfigError(f"{folder}: trained with spaCy word tokenization, which has no Hugging Face "
                          "tokenizer; --format hf needs a run with tokenizer.kind=bpe or wordpiece")
    model = backbone.build_lm(saved.arch)
    model.load_state_dict(saved.state_dict)
    with atomic_dir(out, may_replace=lambda target: None) as tmp:
        backbone.save_pretrained(model, encoder, tmp)
    return out

"""`ulmfit export`: a trained model out of the tool, into a standard format.

    hf    the run's last language model (stage 2, adapted) of a transformer backbone, as a folder that
          `transformers.AutoModelForCausalLM` / `AutoModelForMaskedLM` and `AutoTokenizer` load with no
          code of ours: config.json, model.safetensors, tokenizer.json and tokenizer_config.json. The
          tokenizer adds the xxbos id in front of a text, as the stages did.
    onnx  the run's classifier (any backbone) as model.onnx: input `input_ids` (int64, batch x length,
          padded at the end with the pad id), output `probs` (float32, batch x classes), computed by the
          backbone's scorer (pipeline/models/scorers.py) in fp32. Beside it: config.json (classes, special ids,
          max_tokens, truncation, direction, tokenizer kind), vocab.json, tokenizer.json (subword
          tokenizers), score.py (pipeline/use/onnx_score.py: onnxruntime + the tokenizer, none of our code)
          and a README saying how to score a text.

The output folder is written atomically, and an existing folder that is not empty is refused (nothing
is overwritten). The run's model.pt is verified against its manifest first: a damaged file is one
error line.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

from pipeline.artifacts.model_file import load_model_file
from pipeline.artifacts.stage_folder import MANIFEST, atomic_dir, verify_folder
from pipeline.errors import ArtifactError, ConfigError
from pipeline.models.backbones import get_backbone
from pipeline.stages.registry import REGISTRY

FORMATS = ("hf", "onnx")


def export(run: str | Path, fmt: str, out: str | Path) -> Path:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: one of {', '.join(FORMATS)}")
    if not str(out).strip():
        raise ConfigError("--out '': an empty folder name; name a new folder")
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty folder; not overwriting it: choose a new folder")
    if fmt == "onnx":
        from pipeline.artifacts.layout import classifier_folder

        return export_onnx(classifier_folder(run), out)
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
    from pipeline.data.encoders import encoder_from_state

    encoder = encoder_from_state(saved.tokenizer, saved.vocab)
    if not hasattr(encoder, "tokenizer"):
        raise ConfigError(f"{folder}: trained with spaCy word tokenization, which has no Hugging Face "
                          "tokenizer; --format hf needs a run with tokenizer.kind=bpe or wordpiece")
    model = backbone.build_lm(saved.arch)
    model.load_state_dict(saved.state_dict)
    with atomic_dir(out, may_replace=lambda target: None) as tmp:
        backbone.save_pretrained(model, encoder, tmp)
    return out


ONNX_OPSET = 18


def export_onnx(folder: Path, out: Path) -> Path:
    import torch

    from pipeline.use.predict import trained_classifier

    for package in ("onnx", "onnxscript"):  # what torch.onnx's exporter needs
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"--format onnx needs the `{package}` package: pip install 'ulmfit-flow[onnx]'")
    mf, cc, encoder, backbone, model = trained_classifier(folder)
    scorer = backbone.scorer(model, cc, encoder.specials).eval()
    config = onnx_config(mf, cc, encoder, folder)
    example = torch.full((2, 2 * cc.bptt + 3), encoder.specials.pad, dtype=torch.int64)
    example[:, :cc.bptt + 1] = encoder.specials.unk  # two padded reviews: no length is a special case
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("length")}
    with atomic_dir(out, may_replace=lambda target: None) as tmp, _quiet_exporter():
        # optimize=False: onnxscript's graph optimizer (0.7) fixes the sequence length of a stacked LSTM's
        # second layer to the example's; onnxruntime optimizes the graph itself when it loads it.
        # external_data=False: one file, under protobuf's 2 GB limit (the full preset's AWD-LSTM classifier:
        # 400/1152/3 over 60,000 words, ~44 M parameters, ~180 MB)
        torch.onnx.export(scorer, (example,), str(tmp / "model.onnx"), dynamo=True, optimize=False,
                          external_data=False, input_names=["input_ids"], output_names=["probs"],
                          dynamic_shapes=(dims,), opset_version=ONNX_OPSET, verbose=False)
        (tmp / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
        (tmp / "vocab.json").write_text(json.dumps(list(encoder.itos)), encoding="utf-8")
        if hasattr(encoder, "tokenizer"):
            encoder.tokenizer.save(str(tmp / "tokenizer.json"))
        shutil.copyfile(Path(__file__).with_name("onnx_score.py"), tmp / "score.py")
        (tmp / "README.md").write_text(onnx_readme(config), encoding="utf-8")
    return out


@contextmanager
def _quiet_exporter():
    """torch.onnx and onnxscript report each pass (and torchvision's absence) on the log; a user of
    `ulmfit export` wants one line."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def onnx_config(mf, cc, encoder, folder: Path) -> dict:
    from pipeline.artifacts.stage_folder import read_metrics
    from pipeline.data.word_tokens import SPECIAL_TOKENS
    from pipeline.models.direction import model_direction

    sp, state = encoder.specials, encoder.state()
    tokenizer = {"kind": state["kind"], "lang": state.get("lang"), "special_tokens": SPECIAL_TOKENS}
    return {"classes": list(mf.classes), "backbone": mf.backbone, "tokenizer": tokenizer,
            "pad_id": sp.pad, "bos_id": sp.bos, "unk_id": sp.unk, "max_tokens": cc.max_tokens,
            "truncation": cc.truncation, "direction": model_direction(mf.config),
            "inputs": {"input_ids": "int64 [batch, length]: token ids, bos first, padded at the end with pad_id"},
            "outputs": {"probs": "float32 [batch, classes]: class probabilities, in the order of `classes`"},
            "source": str(folder), "test_accuracy": read_metrics(folder).get("test_accuracy")}


def onnx_readme(config: dict) -> str:
    needs = ("spaCy and fastai (its word tokenization rules)" if config["tokenizer"]["kind"] == "spacy"
             else "the `tokenizers` package (tokenizer.json)")
    return f"""# An ulmfit-flow classifier in ONNX

{config["backbone"]} classifier, classes {config["classes"]}, test accuracy {config["test_accuracy"]},
exported from `{config["source"]}`.

| file | what it holds |
| --- | --- |
| model.onnx | the classifier: `input_ids` int64 [batch, length] -> `probs` float32 [batch, classes] |
| config.json | classes, special ids, `max_tokens` / `truncation`, reading direction, tokenizer kind |
| vocab.json | the token of each id |
| score.py | tokenize + onnxruntime, with no ulmfit-flow code |

Score texts (needs `onnxruntime`, `numpy` and {needs}):

    python score.py "A moving, beautifully acted film." "Two hours I will never get back."
    python score.py --file reviews.txt

or from Python:

    from score import Scorer
    probs = Scorer("path/to/this/folder").probs(["A moving, beautifully acted film."])  # rows: texts, columns: classes

By hand: encode a text to ids as score.py does (bos id first; cut to `max_tokens`; reversed after the
bos id for a backward model), pad the rows of a batch at the end with `pad_id`, and run
`onnxruntime.InferenceSession("model.onnx").run(["probs"], {{"input_ids": ids}})`. The probabilities
match `ulmfit predict` on the same texts to about 1e-5 (fp32; a run evaluated in bf16 differs from
its own predict by bf16 rounding).
"""

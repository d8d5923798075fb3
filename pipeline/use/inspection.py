"""Read a finished run's artifacts for analysis (the notebooks' only entry point besides `pipeline.use.predict`).

Plain Python, no Prefect. Everything takes a run directory (the folder holding one folder per
stage of `pipeline.stages.registry`) and a stage name, and checks that the stage folder is
complete before reading it.

    load_stage(run, "pretrain")            -> {"metrics", "history", "card", "model", "path"}
    load_language_model(run, "adapt")      -> (model, vocab)
    text_encoder(run, "adapt")             -> the stage's tokenizer + vocabulary (encode / decode)
    embedding_matrix(run, "pretrain")      -> (numpy matrix, vocab)
    nearest_neighbours(run, stage, words)  -> DataFrame word / neighbour / cosine
    next_word_predictions(run, stage, p)   -> DataFrame token / probability
    embedding_shift(run)                   -> DataFrame of words whose vectors moved most in adaptation
    test_sample(run)                       -> the classifier's test reviews: the rows the stage recorded
    test_predictions(run)                  -> DataFrame of the classifier's test sample with predictions
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.artifacts.layout import stage_dir
from pipeline.artifacts.model_file import ModelFile, load_model_file
from pipeline.artifacts.stage_folder import read_metrics
from pipeline.errors import ArtifactError
from pipeline.stages.registry import REGISTRY, classifier_stage, stage_names

STAGES = stage_names()
LM_STAGES = tuple(name for name, stage in REGISTRY.items() if stage.model_kind == "lm")
COMPARE_FILE = "compare.csv"


def find_run_dir(run_dir: str | Path) -> Path:
    """A run directory as given, or - for a relative path that does not exist here - relative to the
    repository root (notebooks run with notebooks/ as their working directory)."""
    run = Path(run_dir).expanduser()
    if not run.is_absolute() and not run.exists():
        for base in (Path.cwd().parent, Path(__file__).resolve().parents[2]):
            if (base / run).exists():
                return (base / run).resolve()
    return run.resolve()


def load_model(run_dir: str | Path, stage: str) -> ModelFile:
    """The stage's model file (weights, vocabulary, tokenizer, architecture, config)."""
    return _model(str(stage_dir(run_dir, stage).resolve()))


@lru_cache(maxsize=4)
def _model(folder: str) -> ModelFile:
    return load_model_file(Path(folder))


def load_stage(run_dir: str | Path, stage: str, with_model: bool = True) -> dict:
    """A stage's metrics, per-epoch history, card text and (optionally) its model file."""
    folder = stage_dir(run_dir, stage)
    history = pd.read_csv(folder / "history.csv") if (folder / "history.csv").stat().st_size > 1 else pd.DataFrame()
    return {"path": folder, "metrics": read_metrics(folder), "history": history,
            "card": (folder / "card.md").read_text(), "model": load_model(run_dir, stage) if with_model else None,
            "loss_plot": folder / "history.png"}


def run_config(run_dir: str | Path, stage: str) -> dict:
    """The stage's own config as recorded in its model file (seed, model, tokenizer, its section)."""
    return load_model(run_dir, stage).config


# --- language models ------------------------------------------------------------------------

def _lm(run_dir, stage: str) -> ModelFile:
    if stage not in LM_STAGES:
        raise ArtifactError(f"{stage!r} holds no language model; use one of {', '.join(LM_STAGES)}")
    model = load_model(run_dir, stage)
    if model.kind != "lm":
        raise ArtifactError(f"{stage_dir(run_dir, stage)}: holds a {model.kind!r} model, not a language model")
    return model


def load_language_model(run_dir: str | Path, stage: str = "adapt"):
    """(model in eval mode on CPU, vocabulary) of a pretrain or adapt stage."""
    from pipeline.models.backbones import get_backbone

    lm = _lm(run_dir, stage)
    model = get_backbone(lm.backbone).build_lm(lm.arch)
    model.load_state_dict(lm.state_dict)
    return model.eval(), lm.vocab


def text_encoder(run_dir: str | Path, stage: str):
    """The tokenizer + vocabulary a stage was trained with (words or subwords)."""
    from pipeline.data.encoders import encoder_from_state

    model = load_model(run_dir, stage)
    return encoder_from_state(model.tokenizer, model.vocab)


def embedding_matrix(run_dir: str | Path, stage: str = "pretrain") -> tuple[np.ndarray, list[str]]:
    """The input embedding (vocab x dim) and its vocabulary."""
    from pipeline.models.backbones import get_backbone

    lm = _lm(run_dir, stage)
    key = get_backbone(lm.backbone).vocab_keys[0]
    return lm.state_dict[key].float().numpy(), lm.vocab


def is_word(token: str) -> bool:
    """Real vocabulary entries (not special tokens, padding fillers or punctuation)."""
    return not token.startswith("xx") and any(ch.isalnum() for ch in token)


def nearest_neighbours(run_dir: str | Path, stage: str, words: list[str], k: int = 8) -> pd.DataFrame:
    """The k words with the most similar embeddings (cosine) to each of `words` (lower-cased)."""
    matrix, vocab = embedding_matrix(run_dir, stage)
    stoi = {t: i for i, t in enumerate(vocab)}
    unit = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    usable = np.array([is_word(t) for t in vocab])
    rows = []
    for word in words:
        i = stoi.get(word.lower())
        if i is None:
            rows.append({"word": word, "rank": None, "neighbour": "(not in vocabulary)", "cosine": np.nan})
            continue
        sims = unit @ unit[i]
        sims[~usable | (np.arange(len(vocab)) == i)] = -np.inf
        for rank, j in enumerate(np.argsort(-sims)[:k], 1):
            rows.append({"word": word, "rank": rank, "neighbour": vocab[j], "cosine": float(sims[j])})
    return pd.DataFrame(rows)


def embedding_shift(run_dir: str | Path, k: int = 20, min_rank: int | None = None) -> pd.DataFrame:
    """Words in both LM vocabularies whose embeddings changed most from pretrain to adapt (cosine distance)."""
    before, vocab_before = embedding_matrix(run_dir, "pretrain")
    after, vocab_after = embedding_matrix(run_dir, "adapt")
    index_before = {t: i for i, t in enumerate(vocab_before)}
    rows = []
    for j, token in enumerate(vocab_after[:min_rank]):
        i = index_before.get(token)
        if i is None or not is_word(token):
            continue
        a, b = before[i], after[j]
        cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
        rows.append({"word": token, "cosine_distance": 1 - cos, "l2_change": float(np.linalg.norm(a - b)),
                     "adapt_vocab_rank": j})
    frame = pd.DataFrame(rows)
    return frame.sort_values("cosine_distance", ascending=False).head(k).reset_index(drop=True) if len(frame) else frame


@torch.no_grad()
def next_word_predictions(run_dir: str | Path, stage: str, prompt: str, k: int = 10) -> pd.DataFrame:
    """The k most likely next tokens after `prompt` (special tokens excluded), with probabilities.
    For a masked LM (bert) this is its prediction for a mask token appended to the prompt; for a
    backward LM, the tokens most likely to come just before the prompt."""
    from pipeline.models.backbones import get_backbone
    from pipeline.models.direction import model_direction, orient

    model, vocab = load_language_model(run_dir, stage)
    encoder, mf = text_encoder(run_dir, stage), load_model(run_dir, stage)
    ids = torch.from_numpy(orient(encoder.encode([prompt])[0], encoder.specials.bos, model_direction(mf.config)))[None]
    logits = get_backbone(mf.backbone).next_token_logits(model, ids, encoder.specials)
    probs = torch.softmax(logits.float(), -1).numpy()[:len(vocab)]
    order = [i for i in np.argsort(-probs) if not vocab[i].startswith("xx")][:k]
    return pd.DataFrame({"token": [vocab[i] for i in order], "probability": [float(probs[i]) for i in order]})


def generate_text(run_dir: str | Path, stage: str, prompt: str, n_words: int = 20, temperature: float = 0.8,
                  seed: int = 0) -> str:
    """Sample a continuation of `prompt` from a stage's language model (a backward LM writes what
    comes before the prompt; the text is in reading order)."""
    from pipeline.models.backbones import get_backbone
    from pipeline.models.direction import model_direction
    from pipeline.training.lm import generate

    model, _ = load_language_model(run_dir, stage)
    mf = load_model(run_dir, stage)
    return generate(model, get_backbone(mf.backbone), text_encoder(run_dir, stage), prompt, n_tokens=n_words,
                    temperature=temperature, seed=seed, direction=model_direction(mf.config))


def vocabulary_summary(run_dir: str | Path, stage: str) -> dict:
    """Counts of real words, special tokens and padding fillers in a stage's vocabulary."""
    vocab = load_model(run_dir, stage).vocab
    fillers = sum(t.startswith("xxfake") for t in vocab)
    specials = sum(t.startswith("xx") for t in vocab) - fillers
    return {"vocab_size": len(vocab), "special_tokens": specials, "padding_fillers": fillers,
            "words": sum(is_word(t) for t in vocab), "punctuation_and_other": len(vocab) - fillers - specials
            - sum(is_word(t) for t in vocab), "most_frequent": [t for t in vocab if is_word(t)][:30]}


def token_lengths(texts: list[str], run_dir: str | Path, stage: str = "pretrain") -> pd.DataFrame:
    """Tokens per text and the share that falls outside a stage's vocabulary (xxunk)."""
    encoder = text_encoder(run_dir, stage)
    unk = encoder.specials.unk
    rows = []
    for ids in encoder.encode(list(texts), "token-lengths"):
        rows.append({"tokens": len(ids), "unknown_share": float((ids == unk).sum()) / max(len(ids), 1)})
    return pd.DataFrame(rows)


# --- classifier --------------------------------------------------------------------------------

def test_sample(run_dir: str | Path) -> pd.DataFrame:
    """The classifier's test sample: the rows its model file recorded, read from the run's own data folder."""
    from pipeline.config import ClassifyConfig
    from pipeline.stages.classify_data import splits_at

    model = load_model(run_dir, classifier_stage())
    cc = ClassifyConfig(**model.config["classify"])
    return splits_at(cc, Path(model.data_dir), model.samples, model.classes).test.reset_index(drop=True)


def test_predictions(run_dir: str | Path, limit: int | None = None) -> pd.DataFrame:
    """Each test review with its true label, predicted label, confidence and whether it was right."""
    from pipeline.use.predict import predict

    frame = test_sample(run_dir)
    if limit is not None:
        frame = frame.head(limit)
    results = predict(run_dir, frame["text"].tolist())
    frame = frame.assign(predicted=[label for label, _ in results], confidence=[p for _, p in results])
    frame["correct"] = frame["predicted"] == frame["label"].astype(str)
    return frame


def calibration_table(predictions: pd.DataFrame, bins: int = 5) -> pd.DataFrame:
    """Reliability diagram data: mean confidence vs accuracy per confidence bin."""
    edges = np.linspace(predictions["confidence"].min() if len(predictions) else 0.5, 1.0, bins + 1)
    edges[0] = min(edges[0], 0.5)
    cut = pd.cut(predictions["confidence"], edges, include_lowest=True)
    grouped = predictions.groupby(cut, observed=True)
    return pd.DataFrame({"confidence": grouped["confidence"].mean(), "accuracy": grouped["correct"].mean(),
                         "count": grouped.size()}).reset_index(names="bin")


def confusion_matrix(run_dir: str | Path) -> pd.DataFrame:
    """The test confusion matrix recorded by the classify stage (rows = true, columns = predicted)."""
    metrics = read_metrics(stage_dir(run_dir, classifier_stage()))
    classes = metrics["classes"]
    return pd.DataFrame(metrics["confusion_matrix"], index=pd.Index(classes, name="true"),
                        columns=pd.Index(classes, name="predicted"))


# --- comparison ------------------------------------------------------------------------------

def load_comparison(run_dir: str | Path) -> pd.DataFrame | None:
    """The comparison table a compare run writes (compare.csv in its folder), or None if there is none."""
    run = Path(run_dir).expanduser()
    for path in (run / COMPARE_FILE, run / "report" / COMPARE_FILE, run / "compare" / COMPARE_FILE):
        if path.is_file():
            return pd.read_csv(path)
    return None

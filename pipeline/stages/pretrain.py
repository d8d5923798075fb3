"""Stage 1: train a language model from scratch on Wikipedia text (WikiText)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline.artifacts import write_stage
from pipeline.backbones import get_backbone
from pipeline.config import RunConfig
from pipeline.data import load_corpus, resolve_data_dir
from pipeline.errors import DataError
from pipeline.lm import SAMPLE_PROMPTS, LMData, evaluate, generate, lm_learner, to_docs
from pipeline.stages.common import StageResult, card, loss_plot, lm_blob, out_path, sample_rows
from pipeline.tokens import build_vocab, default_cache_dir, tokenize_cached
from pipeline.training import EpochLog, count_params, fit, pick_device, seed_everything

log = logging.getLogger("ulmfit")
NAME = "pretrain"


def corpus_texts(cfg: RunConfig) -> tuple[list[str], list[str]]:
    """(training articles, validation articles): the valid split, or held-out training articles."""
    pc, data_dir = cfg.pretrain, resolve_data_dir(cfg.data_dir)
    train = load_corpus(pc.corpus, "train", data_dir=data_dir)["text"].tolist()
    if pc.valid_split is None:
        held = sample_rows(len(train), pc.max_valid_docs or max(1, len(train) // 100), cfg.seed + 1)
        valid, rest = [train[i] for i in held], [t for i, t in enumerate(train) if i not in set(held)]
        return [rest[i] for i in sample_rows(len(rest), pc.max_docs, cfg.seed)], valid
    try:
        valid = load_corpus(pc.corpus, pc.valid_split, data_dir=data_dir)["text"].tolist()
    except DataError as err:
        raise DataError(f"{err}. To hold out training articles instead, set pretrain.valid_split=null") from None
    return ([train[i] for i in sample_rows(len(train), pc.max_docs, cfg.seed)],
            [valid[i] for i in sample_rows(len(valid), pc.max_valid_docs, cfg.seed)])


def run(cfg: RunConfig, out_dir: str | Path, cache_key: str = "") -> StageResult:
    pc, start = cfg.pretrain, time.perf_counter()
    seed_everything(cfg.seed)
    cache, tok = default_cache_dir(cfg.cache_dir), cfg.tokenizer
    train_texts, valid_texts = corpus_texts(cfg)
    train = tokenize_cached(train_texts, cache, tok.lang, tok.n_workers, f"{pc.corpus}/train")
    valid = tokenize_cached(valid_texts, cache, tok.lang, tok.n_workers, f"{pc.corpus}/valid")
    itos = build_vocab(train, pc.min_freq, pc.max_vocab)
    data = LMData(to_docs(train, itos), to_docs(valid, itos))

    backbone, device = get_backbone(cfg.model.backbone), pick_device(cfg.device)
    model = backbone.build_lm(len(itos), cfg.model)
    learn = lm_learner(backbone, model, data, pc.bs, pc.bptt, pc.wd, device)
    log.info("pretrain: %s, %d params, vocab %d, %d train / %d valid tokens, device %s", backbone.name,
             count_params(model), len(itos), data.n_train_tokens, data.n_valid_tokens, device)
    recorder, train_start = EpochLog(NAME), time.perf_counter()
    fit(learn, pc.epochs, pc.lr, pc.schedule, NAME, recorder)
    train_secs = time.perf_counter() - train_start
    scores = evaluate(learn)

    metrics = {"valid_perplexity": scores["perplexity"], "valid_accuracy": scores["accuracy"],
               "valid_loss": scores["loss"], "corpus": pc.corpus, "epochs": pc.epochs,
               "train_tokens": data.n_train_tokens, "valid_tokens": data.n_valid_tokens,
               "train_docs": len(train), "vocab_size": len(itos), "params": count_params(model),
               "train_seconds": train_secs,
               "train_tokens_per_sec": pc.epochs * data.n_train_tokens / max(train_secs, 1e-9),
               "wall_seconds": time.perf_counter() - start, "device": str(device)}
    samples = {p: generate(learn.model, itos, p, lang=tok.lang, seed=cfg.seed) for p in SAMPLE_PROMPTS}
    history = recorder.history()
    write_stage(out_path(out_dir),
                model=lm_blob(learn.model, itos, cfg, NAME, backbone.name, cfg.model.model_dump()),
                metrics=metrics, history=history, cache_key=cache_key,
                extra_files={"history.png": loss_plot(recorder.batch_losses, history, "Stage 1: pretraining")},
                card=card("Stage 1: pretrained language model",
                          f"{backbone.name} trained from scratch on {pc.corpus} ({len(train)} documents).",
                          metrics, samples, history))
    log.info("pretrain: valid perplexity %.1f, accuracy %.3f", scores["perplexity"], scores["accuracy"])
    return StageResult(NAME, str(out_path(out_dir)), metrics)

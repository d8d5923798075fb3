"""Stage 2: adapt the pretrained language model to the target domain (IMDb reviews by default)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from pipeline.artifacts.model_file import ModelFile, load_model_file
from pipeline.config import AdaptConfig, RunConfig
from pipeline.data.corpora import is_registered, load_corpus, resolve_data_dir
from pipeline.data.encoders import encoder_from_state, fit_encoder
from pipeline.errors import DataError
from pipeline.models.backbones import get_backbone, with_vocab
from pipeline.models.direction import check_upstream, single_direction
from pipeline.models.vocab_transfer import transfer_embeddings
from pipeline.stages.context import StageContext, StageResult
from pipeline.stages.lm_stage import sample_rows, write_lm_stage
from pipeline.training.accel import resolve_precision, wants_compile
from pipeline.training.flops import lm_flops_metrics
from pipeline.training.learner import EpochLog, count_params, discriminative, fit, pick_device, seed_everything
from pipeline.training.lm import SAMPLE_PROMPTS, evaluate, final_scores, generate, lm_data, lm_learner

log = logging.getLogger("ulmfit")


def held_out_split(cfg: RunConfig) -> tuple[list[str], list[str]]:
    """The stage's (train, held-out) texts, as the stage and the validation (`pipeline.validate`) load them."""
    return split_held_out(domain_texts(cfg.adapt, resolve_data_dir(cfg.data_dir)), cfg.adapt, cfg.seed)


def domain_texts(ac: AdaptConfig, data_dir: Path) -> list[str]:
    """The target-domain LM text: the configured registry splits (test only when asked), or a user file."""
    if not is_registered(ac.corpus):
        return load_corpus(ac.corpus, None, data_dir=data_dir, text_col=ac.text_col)["text"].tolist()
    splits = list(ac.splits) + (["test"] if ac.include_test and "test" not in ac.splits else [])
    if "test" in splits and not ac.include_test:
        raise DataError("adapt.splits includes 'test' but adapt.include_test is false: "
                        "using test-set text leaks it into the LM; set adapt.include_test=true to allow it")
    texts: list[str] = []
    for split in splits:
        texts += load_corpus(ac.corpus, split, data_dir=data_dir)["text"].tolist()
    return texts


def split_held_out(texts: list[str], ac: AdaptConfig, seed: int) -> tuple[list[str], list[str]]:
    picked = sample_rows(len(texts), ac.max_docs, seed)
    order = np.random.default_rng(seed + 1).permutation(picked)
    n_valid = max(1, int(round(len(order) * ac.valid_frac)))
    if ac.max_valid_docs is not None:
        n_valid = min(n_valid, ac.max_valid_docs)
    if n_valid >= len(order):
        raise DataError(f"adapt corpus {ac.corpus!r} has only {len(order)} documents: too few to hold some out")
    return [texts[i] for i in sorted(order[n_valid:])], [texts[i] for i in sorted(order[:n_valid])]


def target_model(cfg: RunConfig, pretrained: ModelFile, train_texts: list[str]):
    """(encoder, arch, model) for the target domain. A word vocabulary is rebuilt on the target text
    and the stage-1 embeddings are carried over row by row; a subword tokenizer is reused as is."""
    ac, backbone = cfg.adapt, get_backbone(pretrained.backbone)
    encoder = encoder_from_state(pretrained.tokenizer, pretrained.vocab, cfg.cache_dir, cfg.tokenizer.n_workers)
    arch, state, n_known = pretrained.arch, pretrained.state_dict, len(encoder.itos)
    if encoder.refits_on_target:
        old_itos = encoder.itos
        encoder = fit_encoder(cfg.tokenizer, train_texts, ac.min_freq, ac.max_vocab, cfg.cache_dir,
                              f"{ac.corpus}/lm-train")
        state, n_known = transfer_embeddings(state, old_itos, encoder.itos, backbone.vocab_keys)
        arch = with_vocab(arch, len(encoder.itos))
    model = backbone.build_lm(arch)
    model.load_state_dict(state)
    return encoder, arch, model, n_known


def run(ctx: StageContext) -> StageResult:
    cfg, ac, start = ctx.cfg, ctx.cfg.adapt, time.perf_counter()
    direction = single_direction(cfg.model.direction)  # "both" is the flow's to split, never a stage's
    seed_everything(cfg.seed)
    pretrained = load_model_file(ctx.upstream(), expect_kind="lm")
    check_upstream(pretrained.config, direction, ctx.upstream())
    train_texts, valid_texts = held_out_split(cfg)
    backbone, device = get_backbone(pretrained.backbone), pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, backbone, device)
    encoder, arch, model, n_known = target_model(cfg, pretrained, train_texts)
    data = lm_data(encoder, train_texts, valid_texts, f"{ac.corpus}/lm", direction)
    learn = lm_learner(backbone, model, arch, data, ac.bs, ac.bptt, ac.wd, device, encoder.specials, cfg.seed,
                       compile_model=wants_compile(cfg.compile, backbone, device), precision=precision)
    itos = encoder.itos
    log.info("adapt: vocab %d (%d known to stage 1), %d train / %d held-out tokens", len(itos), n_known,
             data.n_train_tokens, data.n_valid_tokens)
    prompts_before = {p: generate(learn.model, backbone, encoder, p, seed=cfg.seed, direction=direction)
                      for p in SAMPLE_PROMPTS}
    before = evaluate(learn)
    log.info("adapt: held-out perplexity before adaptation %.1f", before["perplexity"])

    recorder, train_start = EpochLog(ctx.stage), time.perf_counter()
    learn.freeze()  # last layer group only: the (partly new) embeddings and decoder; creates the optimizer
    mult = cfg.model.lr_mult()  # the backbone's own scale of the preset's rates
    fit(learn, ac.frozen_epochs, ac.frozen_lr * mult, ac.schedule, f"{ctx.stage}-frozen", recorder, ctx.checkpointer)
    learn.unfreeze()
    n_groups = len(learn.opt.param_lists)
    fit(learn, ac.epochs, discriminative(ac.lr * mult, n_groups, ac.lr_decay), ac.schedule, ctx.stage, recorder,
        ctx.checkpointer)
    train_secs = time.perf_counter() - train_start
    after = final_scores(learn, recorder)

    epochs = ac.frozen_epochs + ac.epochs
    metrics = {"held_out_perplexity_before": before["perplexity"], "held_out_perplexity_after": after["perplexity"],
               "held_out_accuracy_before": before["accuracy"], "held_out_accuracy_after": after["accuracy"],
               "corpus": ac.corpus, "epochs": epochs, "lr": ac.lr * mult, "train_tokens": data.n_train_tokens,
               "held_out_tokens": data.n_valid_tokens, "train_docs": len(data.train), "held_out_docs": len(data.valid),
               "vocab_size": len(itos), "vocab_known_from_pretrain": n_known, "params": count_params(model),
               "backbone": backbone.name, "direction": direction, "objective": backbone.objective,
               "train_seconds": train_secs, "train_tokens_per_sec": epochs * data.n_train_tokens / max(train_secs, 1e-9),
               **lm_flops_metrics(backbone, arch, ac.bptt, epochs * data.n_train_tokens),
               "wall_seconds": time.perf_counter() - start, "device": str(device), "precision": precision}
    samples = {p: generate(learn.model, backbone, encoder, p, seed=cfg.seed, direction=direction)
               for p in SAMPLE_PROMPTS}
    samples = {f"{p} (before)": prompts_before[p] for p in SAMPLE_PROMPTS} | {f"{p} (after)": s for p, s in samples.items()}
    result = write_lm_stage(
        ctx, learn, backbone, encoder, arch, metrics, recorder, samples,
        "Stage 2: language model adapted to the target domain",
        f"Stage-1 {backbone.name} fine-tuned on {ac.corpus} text ({len(data.train)} documents, "
        f"{len(data.valid)} held out). Test-set text used: {ac.include_test}.", "Stage 2: adaptation")
    log.info("adapt: held-out perplexity %.1f -> %.1f", before["perplexity"], after["perplexity"])
    return result

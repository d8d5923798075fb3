"""Stage 1: train a language model from scratch on Wikipedia text (WikiText)."""
from __future__ import annotations

import logging
import time

from pipeline.config import VALID_AUTO, RunConfig
from pipeline.data.corpora import load_corpus, resolve_data_dir, split_available
from pipeline.data.encoders import fit_encoder
from pipeline.errors import ConfigError, DataError
from pipeline.models.backbones import Backbone, get_backbone
from pipeline.models.direction import single_direction
from pipeline.models.zoo import checkpoint_folder, describe
from pipeline.stages.context import StageContext, StageResult
from pipeline.stages.lm_stage import sample_rows, write_lm_stage
from pipeline.training.accel import resolve_precision, wants_compile
from pipeline.training.flops import lm_flops_metrics
from pipeline.training.learner import EpochLog, count_params, fit, pick_device, seed_everything
from pipeline.training.lm import SAMPLE_PROMPTS, final_scores, generate, lm_data, lm_learner

log = logging.getLogger("ulmfit")
# Held-out training articles and the valid split are different articles, and our vocabulary and
# tokenization differ from the published setups, so these perplexities compare only within one source.
PERPLEXITY_CAVEAT = ("a perplexity on held-out training articles and one on the valid split are not comparable "
                     "with each other, nor with published WikiText figures (other vocabulary and tokenization).")


def valid_split(cfg: RunConfig) -> str | None:
    """The split that validates stage 1, or None to hold out training articles.

    "auto" (the default) takes the corpus's "valid" split where the data folder has it, and holds
    out training articles where it does not: fast.ai's canonical WikiText archives hold only train
    and test, so a user who downloads them has no valid split. A named split must exist."""
    pc = cfg.pretrain
    if pc.valid_split != VALID_AUTO:
        return pc.valid_split
    return "valid" if split_available(pc.corpus, "valid", resolve_data_dir(cfg.data_dir)) else None


def valid_source(cfg: RunConfig, n_valid: int) -> str:
    """Where the validation perplexity comes from, for metrics.json and the card."""
    split = valid_split(cfg)
    if split is None:
        return f"{n_valid} held-out {cfg.pretrain.corpus}/train articles"
    return f"{n_valid} {cfg.pretrain.corpus}/{split} articles"


def corpus_texts(cfg: RunConfig) -> tuple[list[str], list[str]]:
    """(training articles, validation articles): the valid split, or held-out training articles."""
    pc, data_dir = cfg.pretrain, resolve_data_dir(cfg.data_dir)
    train = load_corpus(pc.corpus, "train", data_dir=data_dir)["text"].tolist()  # downloads if missing
    split = valid_split(cfg)
    if split is None:
        held = sample_rows(len(train), pc.max_valid_docs or max(1, len(train) // 100), cfg.seed + 1)
        held_set = set(held.tolist())
        valid, rest = [train[i] for i in held], [t for i, t in enumerate(train) if i not in held_set]
        return [rest[i] for i in sample_rows(len(rest), pc.max_docs, cfg.seed)], valid
    try:
        valid = load_corpus(pc.corpus, split, data_dir=data_dir)["text"].tolist()
    except DataError as err:
        raise DataError(f"{err}. To hold out training articles instead, set pretrain.valid_split=null "
                        f"(or \"{VALID_AUTO}\": the valid split where there is one)") from None
    return ([train[i] for i in sample_rows(len(train), pc.max_docs, cfg.seed)],
            [valid[i] for i in sample_rows(len(valid), pc.max_valid_docs, cfg.seed)])


def initial_model(cfg: RunConfig, backbone: Backbone, train_texts: list[str]):
    """(encoder, arch, model): a random model on a tokenizer trained here, or a local checkpoint (init_from)."""
    pc = cfg.pretrain
    if pc.init_from is None:
        encoder = fit_encoder(cfg.tokenizer, train_texts, pc.min_freq, pc.max_vocab, cfg.cache_dir, f"{pc.corpus}/train")
        arch = backbone.make_arch(len(encoder.itos), cfg.model, encoder.specials)
        return encoder, arch, backbone.build_lm(arch)
    if backbone.load_checkpoint is None:
        raise ConfigError(f"pretrain.init_from: the {backbone.name} backbone cannot load checkpoints")
    folder = checkpoint_folder(pc.init_from, single_direction(cfg.model.direction), cfg.cache_dir)
    model, arch, encoder = backbone.load_checkpoint(folder, cfg)
    if len(encoder.itos) > arch["vocab_size"]:
        raise ConfigError(f"init_from {pc.init_from}: tokenizer has {len(encoder.itos)} tokens but the model "
                          f"only {arch['vocab_size']} embeddings")
    return encoder, arch, model


def run(ctx: StageContext) -> StageResult:
    cfg, pc, start = ctx.cfg, ctx.cfg.pretrain, time.perf_counter()
    direction = single_direction(cfg.model.direction)  # "both" is the flow's to split, never a stage's
    seed_everything(cfg.seed)
    train_texts, valid_texts = corpus_texts(cfg)
    backbone, device = get_backbone(cfg.model.backbone), pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, backbone, device)
    encoder, arch, model = initial_model(cfg, backbone, train_texts)
    data = lm_data(encoder, train_texts, valid_texts, pc.corpus, direction)
    learn = lm_learner(backbone, model, arch, data, pc.bs, pc.bptt, pc.wd, device, encoder.specials, cfg.seed,
                       compile_model=wants_compile(cfg.compile, backbone, device), precision=precision)
    log.info("pretrain: %s, %d params, vocab %d, %d train / %d valid tokens, device %s", backbone.name,
             count_params(model), len(encoder.itos), data.n_train_tokens, data.n_valid_tokens, device)
    recorder, train_start = EpochLog(ctx.stage), time.perf_counter()
    lr = pc.lr * cfg.model.lr_mult()  # the backbone's own scale of the preset's rates
    fit(learn, pc.epochs, lr, pc.schedule, ctx.stage, recorder, ctx.checkpointer)
    train_secs = time.perf_counter() - train_start
    scores = final_scores(learn, recorder)

    metrics = {"valid_perplexity": scores["perplexity"], "valid_accuracy": scores["accuracy"],
               "valid_loss": scores["loss"], "corpus": pc.corpus, "epochs": pc.epochs,
               "lr": lr,
               "train_tokens": data.n_train_tokens, "valid_tokens": data.n_valid_tokens,
               "train_docs": len(data.train), "vocab_size": len(encoder.itos), "params": count_params(model),
               "valid_source": valid_source(cfg, len(valid_texts)),
               "backbone": backbone.name, "direction": direction, "objective": backbone.objective,
               "tokenizer": encoder.state()["kind"],
               "init_from": pc.init_from, "init_source": describe(pc.init_from, direction),
               "train_seconds": train_secs,
               "train_tokens_per_sec": pc.epochs * data.n_train_tokens / max(train_secs, 1e-9),
               **lm_flops_metrics(backbone, arch, pc.bptt, pc.epochs * data.n_train_tokens),
               "wall_seconds": time.perf_counter() - start, "device": str(device), "precision": precision}
    samples = {p: generate(learn.model, backbone, encoder, p, seed=cfg.seed, direction=direction)
               for p in SAMPLE_PROMPTS}
    result = write_lm_stage(
        ctx, learn, backbone, encoder, arch, metrics, recorder, samples, "Stage 1: pretrained language model",
        f"{backbone.name} ({backbone.objective} LM) trained on {pc.corpus} ({len(data.train)} documents), "
        f"{'starting from ' + metrics['init_source'] if pc.init_from else 'from scratch'}. "
        "Validation perplexity on "
        f"{metrics['valid_source']}: {PERPLEXITY_CAVEAT}", "Stage 1: pretraining")
    log.info("pretrain: valid perplexity %.1f, accuracy %.3f", scores["perplexity"], scores["accuracy"])
    return result

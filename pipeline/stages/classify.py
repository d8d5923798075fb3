"""Stage 3: fine-tune a classifier on the adapted encoder (ULMFiT).

Pooling head (concat pooling for the LSTM), gradual unfreezing (last group, last two, ..., all),
discriminative LRs (/2.6 per group), one-cycle or STLR within each phase. Long documents are read
whole: the LSTM with BPT3C (it runs over the review in `bptt`-token chunks carrying its state and
the last `max_len` outputs feed the pooling); a transformer encodes each `bptt`-token chunk and
pools over all of them. `max_tokens` cuts reviews first (head, or head+tail) when set.
"""
from __future__ import annotations

import logging
import time
from functools import partial

import numpy as np
import pandas as pd
import torch
from fastai.data.core import DataLoaders
from fastai.metrics import accuracy
from fastai.text.data import SortedDL, pad_chunk

from pipeline.artifacts.cards import card, confusion_table, loss_plot
from pipeline.artifacts.model_file import ModelFile, cpu_state, load_model_file
from pipeline.artifacts.probabilities import PREDICTIONS_FILE, predictions_table, table_bytes
from pipeline.artifacts.stage_folder import write_stage
from pipeline.config import ClassifyConfig, stage_config
from pipeline.data.corpora import resolve_data_dir
from pipeline.data.encoders import encoder_from_state
from pipeline.errors import ArtifactError
from pipeline.models.backbones import get_backbone
from pipeline.models.direction import check_upstream, orient, single_direction
from pipeline.models.heads import init_from_probe, use_head
from pipeline.stages.classify_data import LabeledSplits, classify_seed, stage_splits
from pipeline.stages.context import StageContext, StageResult
from pipeline.training import ranks
from pipeline.training.accel import inference_autocast, resolve_precision, wants_compile
from pipeline.training.baselines import pooled_features, same_sample_baselines
from pipeline.training.bn_stats import RecomputeBNStats
from pipeline.training.learner import (
    EpochLog,
    count_params,
    discriminative,
    fit,
    make_learner,
    pick_device,
    seed_everything,
)

log = logging.getLogger("ulmfit")


def truncate(ids: np.ndarray, cc: ClassifyConfig) -> np.ndarray:
    """Cut a review to max_tokens: its head, or its head and tail (Sun et al. 2019: 1/4 head, 3/4 tail)."""
    n = cc.max_tokens
    if n is None or len(ids) <= n:
        return ids
    if cc.truncation == "head":
        return ids[:n]
    head = n // 4
    return np.concatenate([ids[:head], ids[len(ids) - (n - head):]])


def encode_texts(texts: list[str], encoder, cc: ClassifyConfig, name: str, direction: str,
                 cache: bool = True) -> list[torch.Tensor]:
    """Token ids of each text as the classifier reads them: cut by `truncate` (so head and tail are the
    review's own), then read in the model's direction (pipeline.models.direction). Training, evaluation and
    predict all encode through here."""
    bos = encoder.specials.bos
    return [torch.from_numpy(orient(truncate(ids, cc), bos, direction)) for ids in encoder.encode(texts, name, cache=cache)]


def encode(frame: pd.DataFrame, encoder, classes: list[str], cc: ClassifyConfig, name: str,
           direction: str) -> list[tuple]:
    """(token ids, class index) pairs, each review encoded by `encode_texts`."""
    label_ix = {c: i for i, c in enumerate(classes)}
    docs = encode_texts(frame["text"].tolist(), encoder, cc, name, direction)
    return [(ids, torch.tensor(label_ix[label])) for ids, label in zip(docs, frame["label"])]


def loader(items: list[tuple], cc: ClassifyConfig, shuffle: bool, device, pad_id: int, bs: int | None = None) -> SortedDL:
    # Batches of similar lengths, padded at the front in whole chunks of bptt (what BPT3C expects).
    # num_workers=0: fastai defaults to forked workers, which die inside Prefect's task threads.
    return SortedDL(items, res=[len(x) for x, _ in items], bs=bs or cc.bs, shuffle=shuffle, device=device,
                    num_workers=0, pin_memory=torch.device(device).type == "cuda",
                    before_batch=partial(pad_to_chunks, pad_id=pad_id, chunk_len=cc.bptt))


def pad_to_chunks(samples: list[tuple], pad_id: int, chunk_len: int) -> list[tuple]:
    """fastai's `pad_input_chunk` layout (whole chunks of padding in front, the rest at the end) with the
    batch length rounded up to whole chunks, so that every review's last chunk is the batch's last.

    fastai pads to the longest review only. Its SentenceEncoder reads each chunk's rows as a prefix of
    the batch (the rows whose chunk starts with a token), so a review whose tail sits in a last chunk
    that a shorter one's end padding opens was cut: its last tokens got zero states, which the pooling
    counted (fastai issue 3379). Rounded up, each review ends in the last chunk, and the padding after
    it, (-length) % chunk_len, depends on the review alone: a review scores the same in any batch."""
    longest = max(len(sample[0]) for sample in samples)
    pad_len = -(-longest // chunk_len) * chunk_len
    return [(pad_chunk(sample[0], pad_idx=pad_id, seq_len=chunk_len, pad_len=pad_len), *sample[1:])
            for sample in samples]


def build_model(mf: ModelFile, n_class: int, cc: ClassifyConfig, specials, load_encoder: bool = True):
    """The classifier for `mf`'s architecture; with `load_encoder`, its encoder seeded from `mf`'s LM weights."""
    backbone = get_backbone(mf.backbone)
    model = backbone.build_classifier(mf.arch, n_class, cc, specials)
    use_head(backbone.classifier_head(model), cc.head, n_class, cc.drop_mult)
    if load_encoder:
        wanted = backbone.lm_to_classifier(mf.state_dict)
        missing, unexpected = model.load_state_dict(wanted, strict=False)
        # Everything outside the head must come from the LM; only the head starts fresh.
        head_keys = {k for name, module in model.named_modules() if module is backbone.classifier_head(model)
                     for k in module.state_dict(prefix=f"{name}.")}
        encoder_missing = [k for k in missing if k not in head_keys]
        if unexpected or encoder_missing:
            raise ArtifactError(f"LM weights do not fit the classifier: unexpected {unexpected}, missing {encoder_missing}")
    return backbone, model


def phase_epochs(cc: ClassifyConfig, batches_per_epoch: int) -> list[int]:
    """epochs_per_phase, each multiplied by the smallest whole factor that gives >= min_steps optimizer steps.

    At 100 labels and batch 32 the cpu preset's 1/1/1/4 epochs are 28 steps, too few for the head
    to converge (a frozen-encoder linear probe then beats the fine-tuned classifier); scaling every
    phase alike keeps the schedule's shape (how long the encoder stays frozen) at any label budget."""
    steps = sum(cc.epochs_per_phase) * max(batches_per_epoch, 1)
    if cc.min_steps is None or steps >= cc.min_steps or steps == 0:
        return list(cc.epochs_per_phase)
    factor = -(-cc.min_steps // steps)  # ceiling
    return [e * factor for e in cc.epochs_per_phase]


def gradual_unfreezing(learn, cc: ClassifyConfig, recorder: EpochLog, ckpt=None,
                       epochs_per_phase: list[int] | None = None, top_lrs: list[float] | None = None) -> None:
    """ULMFiT's schedule: phase k trains the last k layer groups at top LR top_lrs[k] (default cc.lrs), each
    lower group at that / cc.lr_decay per group."""
    n_groups, top_lrs = len(learn.opt.param_lists), top_lrs or cc.lrs
    for phase, (epochs, lr) in enumerate(zip(epochs_per_phase or cc.epochs_per_phase, top_lrs)):
        last = phase == len(top_lrs) - 1 or phase + 1 >= n_groups
        if last:
            learn.unfreeze()
        else:
            learn.freeze_to(-(phase + 1))
        label = "all groups" if last else f"last {phase + 1} group(s)"
        log.info("classify phase %d: training %s, top lr %.2g", phase + 1, label, lr)
        fit(learn, epochs, discriminative(lr, n_groups, cc.lr_decay), cc.schedule, f"phase{phase + 1}", recorder,
            ckpt)
        if last:
            break


def class_probs(learn, dl) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities and targets of every item in `dl` (a `loader`), in the items' order: the one
    inference path of the test evaluation and of `pipeline.use.predict`."""
    probs, targets = learn.get_preds(dl=dl)
    return probs.float(), targets


def evaluate(learn, dl, classes: list[str]) -> dict:
    probs, targets = class_probs(learn, dl)
    preds = probs.argmax(dim=1)
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(confusion, (targets.numpy(), preds.numpy()), 1)
    return {"accuracy": float((preds == targets).float().mean()), "confusion": confusion.tolist(),
            "probs": probs.float().numpy()}  # rows in the loader's item order (get_preds undoes the sorting)


def start_from_probe(model, backbone, train: list, valid: list, cc: ClassifyConfig, device, pad: int,
                     precision: str) -> dict:
    """LP-FT: set the lp_ft head to the linear probe's solution on the frozen encoder's pooled features,
    read in the arithmetic the classifier trains in (bf16 autocast changes features that vary by 1e-6)."""
    with inference_autocast(device, precision):
        x_train, y_train = pooled_features(model, backbone, loader(train, cc, False, device, pad))
        x_valid, y_valid = pooled_features(model, backbone, loader(valid, cc, False, device, pad))
    scores = init_from_probe(backbone.classifier_head(model), x_train, y_train, x_valid, y_valid)
    log.info("classify: head started from the linear probe (C=%g): validation accuracy %.4f before fine-tuning",
             scores["C"], scores["valid_accuracy"])
    return {"head_start_valid_accuracy": scores["valid_accuracy"], "head_start_C": scores["C"]}


def _summary(splits: LabeledSplits, cc: ClassifyConfig) -> str:
    return (f"Classifier on the adapted encoder: {len(splits.train)} labeled training examples "
            f"(balanced, from {cc.corpus}), {len(splits.valid)} held out for validation, evaluated on "
            f"{len(splits.test)} examples of {splits.test_source}. Classes: {', '.join(splits.classes)}.")


def run(ctx: StageContext) -> StageResult:
    cfg, cc, start = ctx.cfg, ctx.cfg.classify, time.perf_counter()
    direction = single_direction(cfg.model.direction)  # "both" is the flow's to split, never a stage's
    seed = classify_seed(cfg)
    seed_everything(seed)
    adapted = load_model_file(ctx.upstream(), expect_kind="lm")
    check_upstream(adapted.config, direction, ctx.upstream())
    splits = stage_splits(cfg)
    encoder = encoder_from_state(adapted.tokenizer, adapted.vocab, cfg.cache_dir, cfg.tokenizer.n_workers)
    classes, pad = splits.classes, encoder.specials.pad
    train, valid, test = (encode(getattr(splits, s), encoder, classes, cc, f"{cc.corpus}/{s}-sample", direction)
                          for s in ("train", "valid", "test"))
    device = pick_device(cfg.device)
    backbone, model = build_model(adapted, len(classes), cc, encoder.specials)
    model.to(device)  # the baselines and the probe start call it before the Learner would move it
    precision = resolve_precision(cfg.precision, backbone, device)
    baselines = {}
    if cc.baselines:  # before fine-tuning: the probe reads the encoder as the LM stages left it
        batches = {name: loader(items, cc, False, device, pad) for name, items in
                   (("train", train), ("valid", valid), ("test", test))}
        baselines = same_sample_baselines(model, backbone, splits, batches)
        log.info("classify: on the same samples, TF-IDF + LR %.4f, linear probe %.4f (test accuracy)",
                 baselines["tfidf_test_accuracy"], baselines["probe_test_accuracy"])
    start_head = start_from_probe(model, backbone, train, valid, cc, device, pad, precision) if cc.head == "lp_ft" else {}
    # Under DDP: this rank's share of the training examples and of the batch; every rank validates
    # and tests on the whole sets, so the metrics are the global ones.
    train_dl = loader(ranks.shard_items(train), cc, True, device, pad, ranks.per_rank_batch(cc.bs))
    dls = DataLoaders(train_dl, loader(valid, cc, False, device, pad), device=device)
    callbacks = backbone.classifier_callbacks() + ([RecomputeBNStats()] if cc.recompute_bn_stats else [])
    learn = make_learner(dls, model, backbone.classifier_splitter, callbacks, [accuracy],
                         cc.wd, device, compile_model=wants_compile(cfg.compile, backbone, device), precision=precision)
    learn.create_opt()
    log.info("classify: %d train / %d valid / %d test examples, %d params, %d layer groups", len(train),
             len(valid), len(test), count_params(model), len(learn.opt.param_lists))
    epochs = phase_epochs(cc, len(train_dl))
    if epochs != list(cc.epochs_per_phase):
        log.info("classify: %d batches per epoch; epochs per phase %s -> %s (classify.min_steps=%d)",
                 len(train_dl), cc.epochs_per_phase, epochs, cc.min_steps)
    recorder, train_start = EpochLog(ctx.stage), time.perf_counter()
    top_lrs = [lr * cfg.model.lr_mult() for lr in cc.lrs]  # the backbone's own scale of the preset's rates
    gradual_unfreezing(learn, cc, recorder, ctx.checkpointer, epochs, top_lrs)
    train_secs = time.perf_counter() - train_start
    scores = evaluate(learn, loader(test, cc, False, device, pad), classes)

    last_epoch = recorder.rows[-1] if recorder.rows else {}
    metrics = {"test_accuracy": scores["accuracy"], "test_error": 1 - scores["accuracy"], "test_size": len(test),
               "valid_accuracy": last_epoch.get("accuracy"),  # the final weights on the hold-out: what tuning selects on
               "test_source": splits.test_source, "confusion_matrix": scores["confusion"], "classes": classes,
               "n_labels": len(train), "n_valid": len(valid), "epochs": int(sum(epochs)), "epochs_per_phase": epochs,
               "optimizer_steps": int(sum(epochs) * len(train_dl)), "seed": seed,
               "top_lrs": top_lrs,
               **baselines, **start_head,
               "params": count_params(model), "backbone": backbone.name, "direction": direction,
               "train_seconds": train_secs,
               "wall_seconds": time.perf_counter() - start, "device": str(device), "precision": precision}
    history = recorder.history()
    model_file = ModelFile(kind="classifier", stage=ctx.stage, backbone=backbone.name, arch=adapted.arch,
                           config=stage_config(cfg, ctx.stage), state_dict=cpu_state(learn.model),
                           vocab=list(encoder.itos), tokenizer=adapted.tokenizer, classes=classes,
                           samples=splits.indices(), data_dir=str(resolve_data_dir(cfg.data_dir)))
    shown = {k: v for k, v in metrics.items() if k not in ("confusion_matrix", "classes")}
    # each test review's probabilities, for an ensemble with another classifier (pipeline/use/ensemble.py)
    test_probs = predictions_table(model_file.samples["test"], splits.test["label"].tolist(), classes, scores["probs"])
    write_stage(ctx.out_dir, model=model_file, metrics=metrics, history=history, cache_key=ctx.cache_key,
                extra_files={"history.png": loss_plot(recorder.batch_losses, history, "Stage 3: classifier"),
                             PREDICTIONS_FILE: table_bytes(test_probs)},
                card=card("Stage 3: classifier", _summary(splits, cc), shown, None, history)
                + "\n## Confusion matrix (rows = true, columns = predicted)\n\n"
                + confusion_table(classes, scores["confusion"]) + "\n")
    log.info("classify: test accuracy %.4f on %d examples", scores["accuracy"], len(test))
    return StageResult(ctx.stage, str(ctx.out_dir), metrics)

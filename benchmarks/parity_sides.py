"""The two sides of each parity pair (see benchmarks/parity.py for what is compared and why).

ours:      the pipeline's own pieces, as the stages run them (lm_learner / make_learner, training.fit,
           final_scores, classify.build_model, classify.gradual_unfreezing and classify.evaluate), in fp32.
reference: fastai's public API (language_model_learner, text_classifier_learner, match_embeds,
           fit_one_cycle, freeze_to) or, for gpt, a plain PyTorch + transformers loop.

Every side reseeds with the run's seed before it builds its model and loaders, so the sides of a
pair start from identical weights (recorded in `Side.init` and compared by parity.py).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fastai.data.core import DataLoaders
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import Perplexity, accuracy
from fastai.text.all import (
    AWD_LSTM,
    awd_lstm_clas_config,
    awd_lstm_lm_config,
    clean_raw_keys,
    get_model,
    language_model_learner,
    load_ignore_keys,
    match_embeds,
    text_classifier_learner,
)
from torch import nn

from pipeline.artifacts.model_file import ModelFile
from pipeline.models import hf_backbones as hf
from pipeline.stages import classify
from pipeline.training.bn_stats import RecomputeBNStats
from pipeline.training.learner import EpochLog, EpochSeed, discriminative, fit, make_learner, seed_everything
from pipeline.training.lm import LMData, evaluate, final_scores, lm_learner, lm_loader

MOMS = (0.8, 0.7, 0.8)  # ULMFiT's beta1 cycle: our make_learner's and fastai's TextLearner default
SQR_MOM, ADAM_EPS = 0.99, 1e-5  # Adam beta2 (ULMFiT) and fastai Adam's eps
PCT_START, DIV, DIV_FINAL = 0.25, 25.0, 1e5  # fastai fit_one_cycle defaults
SMOOTH_BETA = 0.98  # fastai's smoothed training loss (Recorder's AvgSmoothLoss)
PRECISION = "fp32"  # both sides: parity is about the recipe (bf16 autocast is a separate setting)


@dataclass(frozen=True)
class Phase:
    """One fit call. freeze: None (train the model as built), "freeze" (last layer group only),
    "unfreeze" (all groups with discriminative LRs, lr = the top group's)."""

    name: str
    epochs: int
    lr: float
    freeze: str | None = None


@dataclass
class Side:
    name: str
    epochs: list[dict]  # per epoch: phase, train_loss (fastai's smoothed), valid_loss, accuracy
    final: dict  # LM: loss, perplexity, accuracy (+ *_before for stage 2); classifier: test_accuracy, test_size
    train_seconds: float
    train_tokens: int  # tokens trained on, all epochs together
    init: dict = field(repr=False, default_factory=dict)  # initial weights, names without "hf."
    state: dict | None = field(repr=False, default=None)  # final weights (ours: feed the next stage)

    @property
    def tokens_per_sec(self) -> float:
        return self.train_tokens / max(self.train_seconds, 1e-9)


def weights(model: nn.Module) -> dict:
    return {k.removeprefix("hf."): v.detach().cpu().clone() for k, v in model.state_dict().items()}


def epoch_row(phase: str, named: dict) -> dict:
    acc = next(v for k, v in named.items() if k.endswith("accuracy"))  # lm_accuracy (ours) or accuracy
    return {"phase": phase, "train_loss": float(named["train_loss"]), "valid_loss": float(named["valid_loss"]),
            "accuracy": float(acc)}


def recorder_rows(learn, phase: str) -> list[dict]:
    """This fit's epochs from fastai's Recorder (it starts afresh at every fit call)."""
    names = learn.recorder.metric_names[1:]  # values leave out the 'epoch' column
    return [epoch_row(phase, dict(zip(names, values))) for values in learn.recorder.values]


def _awd_config(base: dict, arch: dict) -> dict:
    # fastai's full default config with our sizes (a partial config raises KeyError('tie_weights')).
    return {**base, "emb_sz": arch["emb_sz"], "n_hid": arch["n_hid"], "n_layers": arch["n_layers"]}


def _total_epochs(phases) -> int:
    return sum(p.epochs for p in phases)


# --- language models: stage 1 and 2 (awd_lstm), stage 1 (gpt) ------------------------------------------

def ours_lm(backbone, arch: dict, data: LMData, lmc, seed: int, device, specials, phases: list[Phase],
            decay: float = 1.0, init_state: dict | None = None, eval_before: bool = False) -> Side:
    """What stages/pretrain.py (phases = [all]) and stages/adapt.py (frozen, then unfrozen) do."""
    seed_everything(seed)
    model = backbone.build_lm(arch)
    if init_state is not None:
        model.load_state_dict(init_state)
    init = weights(model)
    learn = lm_learner(backbone, model, arch, data, lmc.bs, lmc.bptt, lmc.wd, device, specials, seed,
                       precision=PRECISION)
    before = evaluate(learn) if eval_before else {}
    recorder, start = EpochLog("parity"), time.perf_counter()
    for phase in phases:
        lr = phase.lr
        if phase.freeze == "freeze":
            learn.freeze()
        elif phase.freeze == "unfreeze":
            learn.unfreeze()
            lr = discriminative(phase.lr, len(learn.opt.param_lists), decay)
        fit(learn, phase.epochs, lr, lmc.schedule, phase.name, recorder)
    secs = time.perf_counter() - start
    rows = [epoch_row(r["phase"], r) for r in recorder.rows]
    final = final_scores(learn, recorder) | {f"{k}_before": v for k, v in before.items()}
    return Side("ours", rows, final, secs, data.n_train_tokens * _total_epochs(phases), init, weights(learn.model))


def fastai_lm(arch: dict, itos: list[str], data: LMData, lmc, seed: int, device, phases: list[Phase],
              decay: float = 1.0, transfer: tuple[dict, list[str]] | None = None, eval_before: bool = False,
              align_rng: bool = False) -> Side:
    """fastai's language_model_learner + fit_one_cycle; `transfer` = (stage-1 weights, stage-1 vocab),
    loaded as LMLearner.load_pretrained does (match_embeds, clean_raw_keys, load_ignore_keys, freeze)."""
    seed_everything(seed)
    dls = DataLoaders(lm_loader(data.train, lmc.bs, lmc.bptt, True, device),
                      lm_loader(data.valid, lmc.bs, lmc.bptt, False, device), device=device)
    dls.vocab = itos
    learn = language_model_learner(dls, AWD_LSTM, config=_awd_config(awd_lstm_lm_config, arch), pretrained=False,
                                   drop_mult=arch["drop_mult"], metrics=[accuracy, Perplexity()], wd=lmc.wd)
    if transfer is not None:
        old_state, old_itos = transfer
        wgts = match_embeds({k: v.clone() for k, v in old_state.items()}, old_itos, itos)
        load_ignore_keys(learn.model, clean_raw_keys(wgts))
        learn.freeze()
    init = weights(learn.model)
    rows, cbs = [], [EpochSeed()] if align_rng else []
    with learn.no_bar(), learn.no_logging():
        before = _lm_scores(learn.validate()) if eval_before else {}
        start = time.perf_counter()
        for phase in phases:
            lr = phase.lr
            if phase.freeze == "freeze":
                learn.freeze()
            elif phase.freeze == "unfreeze":
                learn.unfreeze()
                lr = slice(phase.lr / decay ** (len(learn.opt.param_lists) - 1), phase.lr)
            if phase.epochs:
                learn.fit_one_cycle(phase.epochs, lr, moms=MOMS, cbs=cbs)
                rows += recorder_rows(learn, phase.name)
        secs = time.perf_counter() - start
        final = _lm_scores(learn.validate()) | {f"{k}_before": v for k, v in before.items()}
    return Side("fastai", rows, final, secs, data.n_train_tokens * _total_epochs(phases), init, weights(learn.model))


def _lm_scores(validated) -> dict:
    loss, acc, _ = validated
    return {"loss": float(loss), "perplexity": math.exp(float(loss)), "accuracy": float(acc)}


def one_cycle(pos: float, lr_max: float) -> tuple[float, float]:
    """fastai's fit_one_cycle at training progress pos in [0, 1): (lr, beta1); cosine pieces,
    lr_max/25 -> lr_max -> lr_max/1e5 and beta1 0.8 -> 0.7 -> 0.8, the turn at PCT_START."""
    def cos(start, end, p):
        return start + (1 + math.cos(math.pi * (1 - p))) * (end - start) / 2
    if pos < PCT_START:
        p = pos / PCT_START
        return cos(lr_max / DIV, lr_max, p), cos(MOMS[0], MOMS[1], p)
    p = (pos - PCT_START) / (1 - PCT_START)
    return cos(lr_max, lr_max / DIV_FINAL, p), cos(MOMS[1], MOMS[2], p)


def no_decay_ids(model: nn.Module) -> set[int]:
    """Biases and LayerNorm parameters: no weight decay (fastai's wd_bn_bias=False, HF's usual recipe)."""
    ids = set()
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
            ids |= {id(p) for p in module.parameters(recurse=False)}
        elif isinstance(getattr(module, "bias", None), nn.Parameter):
            ids.add(id(module.bias))
    return ids


def plain_gpt(arch: dict, data: LMData, lmc, epochs: int, lr_max: float, seed: int, device,
              align_rng: bool = False) -> Side:
    """A plain loop: transformers.GPT2LMHeadModel from our arch, torch AdamW (decoupled wd, beta2 0.99,
    eps 1e-5), fastai's one-cycle LR and beta1 set before every step, the same LMDataLoader batches."""
    seed_everything(seed)
    model = hf._transformers().GPT2LMHeadModel(hf.config_from_arch(arch)).to(device)
    init = weights(model)
    train_dl = lm_loader(data.train, lmc.bs, lmc.bptt, True, device)
    valid_dl = lm_loader(data.valid, lmc.bs, lmc.bptt, False, device)
    skip = no_decay_ids(model)
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if id(p) not in skip], "weight_decay": lmc.wd},
                             {"params": [p for p in params if id(p) in skip], "weight_decay": 0.0}],
                            lr=lr_max, betas=(MOMS[0], SQR_MOM), eps=ADAM_EPS, foreach=False)
    total, step, smooth, rows = max(1, epochs * len(train_dl)), 0, torch.tensor(0.0), []
    start = time.perf_counter()
    for _ in range(epochs):
        if align_rng:  # what our EpochSeed does at each epoch start
            random.seed(int(torch.randint(0, 2**62, (1,))))
        model.train()
        for x, y in train_dl:
            lr, beta1 = one_cycle(step / total, lr_max)
            for group in opt.param_groups:
                group["lr"], group["betas"] = lr, (beta1, SQR_MOM)
            loss = _lm_loss(model, x, y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            step += 1
            smooth = torch.lerp(loss.detach().cpu(), smooth, SMOOTH_BETA)
        valid_loss, valid_acc = _lm_validate(model, valid_dl)
        rows.append({"phase": "pretrain", "train_loss": float(smooth / (1 - SMOOTH_BETA ** step)),
                     "valid_loss": valid_loss, "accuracy": valid_acc})
    secs = time.perf_counter() - start
    valid_loss, valid_acc = (rows[-1]["valid_loss"], rows[-1]["accuracy"]) if rows else _lm_validate(model, valid_dl)
    final = {"loss": valid_loss, "perplexity": math.exp(valid_loss), "accuracy": valid_acc}
    return Side("plain", rows, final, secs, data.n_train_tokens * epochs, init, weights(model))


def _lm_loss(model, x, y) -> torch.Tensor:
    logits = model(input_ids=x.as_subclass(torch.Tensor)).logits
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), y.as_subclass(torch.Tensor).reshape(-1))


@torch.no_grad()
def _lm_validate(model, dl) -> tuple[float, float]:
    """Mean loss and accuracy weighted by rows per batch, as fastai's AvgLoss/AvgMetric weight them."""
    model.eval()
    loss_sum, acc_sum, rows = 0.0, 0.0, 0
    for x, y in dl:
        logits = model(input_ids=x.as_subclass(torch.Tensor)).logits
        y = y.as_subclass(torch.Tensor)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))
        acc = (logits.argmax(-1) == y).float().mean()
        loss_sum, acc_sum, rows = loss_sum + loss.cpu() * len(y), acc_sum + acc.cpu() * len(y), rows + len(y)
    return float(loss_sum / rows), float(acc_sum / rows)


# --- classifier: stage 3 (awd_lstm) --------------------------------------------------------------------

def _clas_dls(items: dict, cc, device, pad: int) -> DataLoaders:
    return DataLoaders(classify.loader(items["train"], cc, True, device, pad),
                       classify.loader(items["valid"], cc, False, device, pad), device=device)


def _clas_tokens(items: dict, cc) -> int:
    return sum(len(x) for x, _ in items["train"]) * int(sum(cc.epochs_per_phase))


def ours_classifier(backbone, arch: dict, lm_state: dict, items: dict, classes: list[str], cc, seed: int,
                    device, specials) -> Side:
    """What stages/classify.py does: the adapted encoder (build_model, which checks that every encoder
    weight comes from the LM), gradual unfreezing, the test sample. Its same-sample baselines are left
    out: they score the encoder before fine-tuning and change nothing in training."""
    seed_everything(seed)
    # build_model reads only these fields of the adapted model file
    adapted = ModelFile(kind="lm", stage="adapt", backbone=backbone.name, arch=arch, config={}, state_dict=lm_state,
                        vocab=[], tokenizer={})
    _, model = classify.build_model(adapted, len(classes), cc, specials)
    init = weights(model)
    callbacks = backbone.classifier_callbacks() + ([RecomputeBNStats()] if cc.recompute_bn_stats else [])
    learn = make_learner(_clas_dls(items, cc, device, specials.pad), model, backbone.classifier_splitter,
                         callbacks, [accuracy], cc.wd, device, precision=PRECISION)
    learn.create_opt()
    recorder, start = EpochLog("parity"), time.perf_counter()
    classify.gradual_unfreezing(learn, cc, recorder)
    secs = time.perf_counter() - start
    scores = classify.evaluate(learn, classify.loader(items["test"], cc, False, device, specials.pad), classes)
    rows = [epoch_row(r["phase"], r) for r in recorder.rows]
    final = {"test_accuracy": scores["accuracy"], "test_size": len(items["test"])}
    return Side("ours", rows, final, secs, _clas_tokens(items, cc), init)


def fastai_classifier(arch: dict, itos: list[str], lm_state: dict, items: dict, classes: list[str], cc,
                      seed: int, device, pad: int, align_rng: bool = False) -> Side:
    """text_classifier_learner + the encoder loaded as TextLearner.load_encoder does + the text
    tutorial's gradual unfreezing: fit_one_cycle(1, lr); freeze_to(-2); fit_one_cycle(1, slice(lr/2.6**k, lr));
    ...; unfreeze(); fit_one_cycle(...), with our phases, LRs and LR decay."""
    seed_everything(seed)
    dls = _clas_dls(items, cc, device, pad)
    dls.vocab = itos
    learn = text_classifier_learner(dls, AWD_LSTM, seq_len=cc.bptt, config=_awd_config(awd_lstm_clas_config, arch),
                                    pretrained=False, drop_mult=cc.drop_mult, n_out=len(classes), max_len=cc.max_len,
                                    metrics=[accuracy], loss_func=CrossEntropyLossFlat(), wd=cc.wd)
    # load_encoder's body, without its file round trip (it unpickles with weights_only=False)
    encoder = get_model(learn.model)[0]
    encoder = getattr(encoder, "module", encoder)
    encoder.load_state_dict(clean_raw_keys({k[2:]: v.clone() for k, v in lm_state.items() if k.startswith("0.")}))
    learn.freeze()
    init = weights(learn.model)
    rows, cbs, n_groups = [], [EpochSeed()] if align_rng else [], len(learn.opt.param_lists)
    with learn.no_bar(), learn.no_logging():
        start = time.perf_counter()
        for phase, (epochs, lr) in enumerate(zip(cc.epochs_per_phase, cc.lrs)):
            last = phase == len(cc.lrs) - 1 or phase + 1 >= n_groups
            if last:
                learn.unfreeze()
            elif phase:
                learn.freeze_to(-(phase + 1))
            if epochs:
                lrs = slice(lr / cc.lr_decay ** (n_groups - 1), lr) if phase or last else lr
                learn.fit_one_cycle(epochs, lrs, moms=MOMS, cbs=cbs)
                rows += recorder_rows(learn, f"phase{phase + 1}")
            if last:
                break
        secs = time.perf_counter() - start
        probs, targets = learn.get_preds(dl=classify.loader(items["test"], cc, False, device, pad))
    final = {"test_accuracy": float((probs.argmax(1) == targets).float().mean()), "test_size": len(items["test"])}
    return Side("fastai", rows, final, secs, _clas_tokens(items, cc), init)

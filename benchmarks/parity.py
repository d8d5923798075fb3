"""Parity with fastai's reference ULMFiT recipe, and of our gpt LM training with a plain loop (issue 13, item 6).

Four pairs, each run in one process, one side after the other (the order alternates from pair to pair),
on the SAME token documents, vocabulary, initial weights, seed and hyperparameters, all taken from a
preset + --set overrides (the sides are in benchmarks/parity_sides.py):

  stage 1  ours: lm_learner + training.fit, as stages/pretrain.py runs them.
           fastai: language_model_learner(dls, AWD_LSTM, config=<the full awd_lstm_lm_config with our sizes>,
           pretrained=False, drop_mult, metrics=[accuracy, Perplexity()], wd) + fit_one_cycle(epochs, lr, moms).
  stage 2  ours: stages/adapt.py's freeze + fit, then unfreeze + fit with discriminative LRs.
           fastai: the stage-1 weights through match_embeds as load_pretrained does; freeze();
           fit_one_cycle(frozen_epochs, frozen_lr); unfreeze(); fit_one_cycle(epochs, slice(lr/decay**k, lr)).
  stage 3  ours: stages/classify.py's build_model, gradual_unfreezing (with its RecomputeBNStats), the test sample.
           fastai: text_classifier_learner(dls, AWD_LSTM, config, seq_len=bptt, max_len, drop_mult,
           pretrained=False) + the adapted encoder + the text tutorial's gradual unfreezing with our phases
           and LRs: fit_one_cycle(1, lr); freeze_to(-2); fit_one_cycle(1, slice(lr/2.6**k, lr)); ...; unfreeze(); ...
  gpt      ours: lm_learner + training.fit with the gpt backbone (stage 1).
           plain: PyTorch + transformers, GPT2LMHeadModel from our arch, torch AdamW, fit_one_cycle's formula.

Shared by both sides, so not under comparison: data selection and tokenization (pretrain.corpus_texts,
adapt.held_out_split, classify_data.stage_splits, our encoders), and the batchers: fastai's LMDataLoader (lm.lm_loader,
which only shrinks bs for a tiny held-out set) and SortedDL + pad_input_chunk (classify.loader), the
classes fastai's TextDataLoaders builds; the documents read in model.direction (forward or backward;
"both" is refused: compare one direction at a time). Both sides of stages 2 and 3 start from OUR
previous stage's weights, so each stage is compared on its own; "same init" in the table checks the
starting weights are identical (for stage 2 that also checks our embedding transfer against fastai's
match_embeds).

Where ours differs from plain fastai on purpose:
- EpochLog (log lines, history) only observes; FiniteLoss only stops a diverged run. Checkpointing is
  off here (it is active only inside the flow's resumable stage tasks) and only saves state.
- EpochSeed reseeds Python's `random` from torch's generator at each epoch, so a resumed run shuffles
  as an uninterrupted one. It changes the document order and shifts torch's stream (dropout masks),
  so by default the sides differ by run-to-run noise. --align-rng gives the reference the same
  reseeding (an EpochSeed callback in fit_one_cycle; the same reseeding in the plain loop): stage 1
  is then bit-identical and gpt agrees to float rounding (tests/test_parity.py).
- final_scores reuses the last epoch's validation instead of a second pass; the reference calls
  learn.validate(). Same numbers: validation is deterministic.
- Stage 2 measures held-out perplexity before training (adapt.run does); so does the reference.
- Classifier phase 1: ours passes discriminative LRs with only the top group unfrozen, the tutorial
  one LR: the same update. fastai's tutorial fine-tunes the unfrozen LM with one LR (2e-3); the
  reference here uses slice(lr/decay**k, lr) as our stage does, so recipes match setting for setting.
- Before each evaluation our classifier re-estimates its head's BatchNorm statistics over the training
  examples (classify.recompute_bn_stats, on by default; pipeline/training/bn_stats.py); fastai uses the running
  averages from training. --set classify.recompute_bn_stats=false gives ours fastai's behaviour.
- The reference loads the encoder with load_encoder's own body (clean_raw_keys, load_state_dict,
  freeze) but not its file round trip: it unpickles with weights_only=False, which this project never does.
- The plain gpt loop mirrors what fastai's Learner computes: AdamW with eps 1e-5 and beta2 0.99,
  decoupled weight decay on all but biases and LayerNorm weights (fastai's wd_bn_bias=False), LR and
  beta1 from fit_one_cycle's formula set before each step (torch's OneCycleLR puts its phase ends at
  step pct*total - 1 and total - 1, one step off fastai's); train loss = fastai's smoothed loss
  (beta 0.98, debiased); valid loss/accuracy weighted by rows per batch as fastai's AvgLoss does.
  Left over: float rounding (AdamW orders its arithmetic differently; fastai's combine_scheds computes
  the schedule position in float32, ~2e-6 relative in the LR).
- Our Learner's batches are fastai's LMTensorText; our HF models take a plain tensor view of them
  (hf_backbones.plain), as the plain loop does, so no torch op inside the transformer dispatches
  through fastai's TensorBase.__torch_function__ on either side.

Tolerances (the "within tolerance" column): every epoch's validation loss within 2 % relative (LM pairs);
classifier test accuracy within max(2 points, 2 standard errors of an accuracy on that test sample);
our training tokens/s at least 95 % of the reference's (timing noise on a shared machine). Tokens/s =
training tokens over the seconds spent in the fit calls, each epoch's validation included as in our
metrics.json (classifier: review tokens, padding excluded). All runs are fp32: our learners get
precision="fp32" explicitly, whatever the config's precision (auto would pick bf16 on a CPU with native
bf16), and `--set precision=bf16` is refused (benchmarks/precision.py measures bf16). The classifier pair
uses classify.seed when set, as the stage does. The device is the config's (`--set device=cpu` forces the CPU).
The first side run in the process also pays one-off start-up costs (about a second): negligible at the
cpu preset's minutes per fit, dominant at smoke scale, where tokens/s say nothing.

usage (from the repository root; -m so that benchmarks/parity_sides.py imports):
  smoke (about a minute):  ULMFIT_DATA_DIR=../shared/data python -m benchmarks.parity --preset smoke
  full comparison (the cpu preset, about 50 min on 2 cores; the numbers for BENCHMARKS.md):
    ULMFIT_DATA_DIR=../shared/data OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.parity --preset cpu \\
        --json runs/parity-cpu.json | tee runs/parity-cpu.md
  more epochs per stage: add --set pretrain.epochs=2 --set adapt.epochs=2; one pair: --pairs gpt
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from benchmarks.parity_sides import Phase, Side, fastai_classifier, fastai_lm, ours_classifier, ours_lm, plain_gpt
from pipeline.config import RunConfig, load_config
from pipeline.data.encoders import fit_encoder
from pipeline.errors import ConfigError, UlmfitError
from pipeline.models.backbones import get_backbone, with_vocab
from pipeline.models.direction import single_direction
from pipeline.models.vocab_transfer import transfer_embeddings
from pipeline.stages import adapt, classify, pretrain
from pipeline.stages.classify_data import classify_seed, stage_splits
from pipeline.training.learner import pick_device, seed_everything
from pipeline.training.lm import lm_data

LM_LOSS_REL_TOL = 0.02
ACC_MIN_TOL = 0.02
SPEED_MIN_RATIO = 0.95
FASTAI_PAD = 1  # get_text_classifier's pad_idx (text_classifier_learner does not pass one)
PARITY_STAGES = ("pretrain", "adapt", "classify")  # the stage modules the sides mirror


def stage1_data(cfg: RunConfig):
    """(backbone, encoder, arch, LMData, phases) exactly as stages/pretrain.py selects and tokenizes them."""
    backbone, pc = get_backbone(cfg.model.backbone), cfg.pretrain
    seed_everything(cfg.seed)
    train_texts, valid_texts = pretrain.corpus_texts(cfg)
    encoder = fit_encoder(cfg.tokenizer, train_texts, pc.min_freq, pc.max_vocab, cfg.cache_dir, f"{pc.corpus}/train")
    arch = backbone.make_arch(len(encoder.itos), cfg.model, encoder.specials)
    data = lm_data(encoder, train_texts, valid_texts, pc.corpus, single_direction(cfg.model.direction))
    return backbone, encoder, arch, data, [Phase("pretrain", pc.epochs, pc.lr)]


def stage2_data(cfg: RunConfig, backbone, encoder, arch: dict, state1: dict):
    """(encoder, arch, LMData, our transferred stage-1 weights, phases) as stages/adapt.py builds them."""
    ac = cfg.adapt
    train_texts, valid_texts = adapt.held_out_split(cfg)
    encoder2 = encoder
    if encoder.refits_on_target:
        encoder2 = fit_encoder(cfg.tokenizer, train_texts, ac.min_freq, ac.max_vocab, cfg.cache_dir,
                               f"{ac.corpus}/lm-train")
    state, _ = transfer_embeddings(state1, encoder.itos, encoder2.itos, backbone.vocab_keys)
    direction = single_direction(cfg.model.direction)
    data = lm_data(encoder2, train_texts, valid_texts, f"{ac.corpus}/lm", direction)
    phases = [Phase("adapt-frozen", ac.frozen_epochs, ac.frozen_lr, "freeze"), Phase("adapt", ac.epochs, ac.lr, "unfreeze")]
    return encoder2, with_vocab(arch, len(encoder2.itos)), data, state, phases


def stage3_data(cfg: RunConfig, encoder) -> tuple[dict, list[str]]:
    """({train, valid, test: [(ids, class)]}, classes) as stages/classify.py samples and encodes them."""
    cc, direction = cfg.classify, single_direction(cfg.model.direction)
    if encoder.specials.pad != FASTAI_PAD:
        raise ConfigError(f"the tokenizer's pad id is {encoder.specials.pad}; fastai's text_classifier_learner "
                          f"pads with {FASTAI_PAD}")
    splits = stage_splits(cfg)
    items = {s: classify.encode(getattr(splits, s), encoder, splits.classes, cc, f"{cc.corpus}/{s}-sample",
                                direction) for s in ("train", "valid", "test")}
    return items, splits.classes


def awd_lstm_pairs(cfg: RunConfig, n_stages: int, device, align_rng: bool) -> list[dict]:
    """Stages 1..n_stages; the sides of stages 2 and 3 start from OUR previous stage's weights."""
    backbone, encoder, arch, data, phases = stage1_data(cfg)
    pc, ac, seed, specials = cfg.pretrain, cfg.adapt, cfg.seed, encoder.specials
    ours = ours_lm(backbone, arch, data, pc, seed, device, specials, phases)
    ref = fastai_lm(arch, encoder.itos, data, pc, seed, device, phases, align_rng=align_rng)
    pairs = [pair("awd_lstm stage 1 (pretrain)", "lm", ours, ref)]
    if n_stages < 2:
        return pairs

    pretrained = ours.state  # ours: our vocabulary transfer; fastai: its match_embeds on the same weights
    encoder2, arch2, data2, transferred, phases2 = stage2_data(cfg, backbone, encoder, arch, pretrained)
    ref = fastai_lm(arch2, encoder2.itos, data2, ac, seed, device, phases2, ac.lr_decay,
                    transfer=(pretrained, encoder.itos), eval_before=True, align_rng=align_rng)
    ours = ours_lm(backbone, arch2, data2, ac, seed, device, specials, phases2, ac.lr_decay, transferred,
                   eval_before=True)
    pairs.append(pair("awd_lstm stage 2 (adapt)", "lm", ours, ref))
    if n_stages < 3:
        return pairs

    items, classes = stage3_data(cfg, encoder2)
    adapted, cc, seed3 = ours.state, cfg.classify, classify_seed(cfg)
    ours = ours_classifier(backbone, arch2, adapted, items, classes, cc, seed3, device, specials)
    ref = fastai_classifier(arch2, encoder2.itos, adapted, items, classes, cc, seed3, device, specials.pad, align_rng)
    pairs.append(pair("awd_lstm stage 3 (classify)", "classifier", ours, ref))
    return pairs


def gpt_pair(cfg: RunConfig, device, align_rng: bool) -> dict:
    backbone, encoder, arch, data, phases = stage1_data(cfg)
    pc = cfg.pretrain
    ref = plain_gpt(arch, data, pc, pc.epochs, pc.lr, cfg.seed, device, align_rng)
    ours = ours_lm(backbone, arch, data, pc, cfg.seed, device, encoder.specials, phases)
    return pair("gpt stage 1 (pretrain)", "lm", ours, ref)


def pair(name: str, kind: str, ours: Side, ref: Side) -> dict:
    """The pair with its checks against the stated tolerances."""
    same_init = ours.init.keys() == ref.init.keys() and all(ours.init[k].equal(ref.init[k]) for k in ours.init)
    if len(ours.epochs) != len(ref.epochs):
        raise RuntimeError(f"{name}: {len(ours.epochs)} epochs (ours) vs {len(ref.epochs)} (reference)")
    rel = [abs(o["valid_loss"] - r["valid_loss"]) / abs(r["valid_loss"]) for o, r in zip(ours.epochs, ref.epochs)]
    checks = {"same_init": same_init, "max_valid_loss_rel_diff": max(rel, default=0.0),
              "speed_ratio": ours.tokens_per_sec / max(ref.tokens_per_sec, 1e-9)}
    if kind == "lm":
        checks["quality_ok"] = checks["max_valid_loss_rel_diff"] <= LM_LOSS_REL_TOL
    else:
        p, n = ref.final["test_accuracy"], ref.final["test_size"]
        checks["accuracy_tolerance"] = max(ACC_MIN_TOL, 2 * math.sqrt(p * (1 - p) / n))
        checks["quality_ok"] = abs(ours.final["test_accuracy"] - p) <= checks["accuracy_tolerance"]
    checks["speed_ok"] = checks["speed_ratio"] >= SPEED_MIN_RATIO
    return {"pair": name, "kind": kind, "ours": ours, "reference": ref, "checks": checks}


def side_json(side: Side) -> dict:
    return {"name": side.name, "epochs": side.epochs, "final": side.final, "train_seconds": side.train_seconds,
            "train_tokens": side.train_tokens, "tokens_per_sec": side.tokens_per_sec}


def epoch_table(pairs: list[dict]) -> str:
    lines = ["| pair | phase | epoch | train loss ours / ref | valid loss ours / ref | Δ valid |",
             "| --- | --- | --- | --- | --- | --- |"]
    for p in pairs:
        for i, (o, r) in enumerate(zip(p["ours"].epochs, p["reference"].epochs)):
            delta = (o["valid_loss"] - r["valid_loss"]) / r["valid_loss"]
            lines.append(f"| {p['pair']} | {o['phase']} | {i + 1} | {o['train_loss']:.4f} / {r['train_loss']:.4f} "
                         f"| {o['valid_loss']:.4f} / {r['valid_loss']:.4f} | {delta:+.2%} |")
    return "\n".join(lines)


def _final(p: dict) -> str:
    o, r = p["ours"].final, p["reference"].final
    if p["kind"] == "classifier":
        return (f"test acc {o['test_accuracy']:.4f} / {r['test_accuracy']:.4f} (n={r['test_size']}, "
                f"tol ±{p['checks']['accuracy_tolerance']:.3f})")
    text = f"ppl {o['perplexity']:.2f} / {r['perplexity']:.2f}, acc {o['accuracy']:.4f} / {r['accuracy']:.4f}"
    if "perplexity_before" in o:
        text += f", ppl before {o['perplexity_before']:.2f} / {r['perplexity_before']:.2f}"
    return text


def summary_table(pairs: list[dict]) -> str:
    lines = ["| pair | reference | same init | final: ours / ref | max Δ valid loss | tokens/s ours / ref "
             "| within tolerance |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in pairs:
        c, o, r = p["checks"], p["ours"], p["reference"]
        verdict = "yes" if c["quality_ok"] and c["speed_ok"] else \
            "no (" + ", ".join(k for k, ok in (("quality", c["quality_ok"]), ("speed", c["speed_ok"])) if not ok) + ")"
        lines.append(f"| {p['pair']} | {r.name} | {'yes' if c['same_init'] else 'NO'} | {_final(p)} "
                     f"| {c['max_valid_loss_rel_diff']:.2%} | {o.tokens_per_sec:,.0f} / {r.tokens_per_sec:,.0f} "
                     f"({c['speed_ratio']:.2f}x) | {verdict} |")
    return "\n".join(lines)


def run(preset: str, overrides: list[str], pair_names: list[str], awd_stages: int, align_rng: bool) -> list[dict]:
    pairs = []
    for name in pair_names:
        cfg = load_config(preset, [*overrides, f"model.backbone={name}"])
        bad = [s for s in PARITY_STAGES if getattr(cfg, s).schedule != "one_cycle"]
        if bad:
            raise ConfigError(f"parity compares fit_one_cycle: set {', '.join(s + '.schedule=one_cycle' for s in bad)}")
        if cfg.precision == "bf16":
            raise ConfigError("parity compares the fp32 recipes (both sides run fp32); bf16 is measured by "
                              "benchmarks/precision.py")
        single_direction(cfg.model.direction)  # one direction per comparison, before any work
        device = pick_device(cfg.device)
        if name == "awd_lstm":
            pairs += awd_lstm_pairs(cfg, awd_stages, device, align_rng)
        else:
            pairs.append(gpt_pair(cfg, device, align_rng))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value")
    parser.add_argument("--pairs", default="awd_lstm,gpt", help="awd_lstm (stages 1-3), gpt (stage 1), or both")
    parser.add_argument("--awd-stages", type=int, choices=(1, 2, 3), default=3, help="how far the awd_lstm chain goes")
    parser.add_argument("--align-rng", action="store_true", help="give the reference our per-epoch reseeding")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = [n.strip() for n in args.pairs.split(",") if n.strip()]
    try:
        if not names or set(names) - {"awd_lstm", "gpt"}:
            raise ConfigError(f"--pairs {args.pairs!r}: choose from awd_lstm, gpt")
        pairs = run(args.preset, args.overrides, names, args.awd_stages, args.align_rng)
    except UlmfitError as err:
        print(f"ulmfit: error: {err}", file=sys.stderr)
        return 2
    print("\n" + summary_table(pairs) + "\n\n" + epoch_table(pairs))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"pair": p["pair"], "checks": p["checks"], "ours": side_json(p["ours"]),
                 "reference": side_json(p["reference"])} for p in pairs]
        args.json.write_text(json.dumps({"preset": args.preset, "overrides": args.overrides,
                                         "align_rng": args.align_rng, "pairs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

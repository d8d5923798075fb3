"""Parity at tiny scale (smoke sizes, two short epochs): our LM training against fastai's own
language_model_learner + fit_one_cycle (awd_lstm) and against a plain PyTorch + transformers loop (gpt),
from the same initial weights and the same batches. The full comparison is benchmarks/parity.py.

With --align-rng's reseeding on the reference side (our EpochSeed; see the benchmark's docstring) the
two AWD-LSTM runs are the same computation in the same order: bit-identical. The gpt runs differ only
by float rounding: torch's AdamW orders its arithmetic differently from fastai's Adam, and fastai's
combine_scheds evaluates the schedule position in float32 (LRs ~2e-6 relative apart). GPT_REL_TOL is
far below any real recipe difference (a wrong beta, eps, weight decay or schedule moves the losses by
more than 1e-3 within these batches) and far above the rounding (about 2e-5 observed).
"""
import math

import pytest
import torch
from fastai.callback.schedule import combined_cos

from benchmarks.parity import main, pair, stage1_data
from benchmarks.parity_sides import MOMS, Side, fastai_lm, one_cycle, ours_lm, plain_gpt
from pipeline.config import load_config

GPT_REL_TOL = 1e-4
TINY = ["pretrain.epochs=2", "pretrain.max_docs=2", "pretrain.max_valid_docs=1", "device=cpu"]


def _stage1_pair(backbone: str):
    cfg = load_config("smoke", [f"model.backbone={backbone}", *TINY])
    bb, encoder, arch, data, phases = stage1_data(cfg)
    pc, cpu = cfg.pretrain, torch.device("cpu")
    ours = ours_lm(bb, arch, data, pc, cfg.seed, cpu, encoder.specials, phases)
    if backbone == "awd_lstm":
        ref = fastai_lm(arch, encoder.itos, data, pc, cfg.seed, cpu, phases, align_rng=True)
    else:
        ref = plain_gpt(arch, data, pc, pc.epochs, pc.lr, cfg.seed, cpu, align_rng=True)
    return ours, ref


def _losses(side: Side) -> list[float]:
    return [row[k] for row in side.epochs for k in ("train_loss", "valid_loss")]


def test_awd_lstm_stage1_is_fastai_language_model_learner(data_dir):
    ours, ref = _stage1_pair("awd_lstm")
    assert len(ours.epochs) == 2 and pair("stage 1", "lm", ours, ref)["checks"]["same_init"]
    assert _losses(ours) == _losses(ref)
    assert [r["accuracy"] for r in ours.epochs] == [r["accuracy"] for r in ref.epochs]
    assert ours.final == ref.final  # final_scores' reuse of the last validation = fastai's fresh validate()
    assert all(torch.equal(ours.state[k], ref.state[k]) for k in ours.state)


def test_gpt_stage1_matches_a_plain_transformers_loop(data_dir):
    ours, ref = _stage1_pair("gpt")
    assert len(ours.epochs) == 2 and pair("gpt", "lm", ours, ref)["checks"]["same_init"]
    for o, r in zip(_losses(ours), _losses(ref)):
        assert o == pytest.approx(r, rel=GPT_REL_TOL)
    assert ours.final["loss"] == pytest.approx(ref.final["loss"], rel=GPT_REL_TOL)
    assert ours.epochs[-1]["valid_loss"] < ours.epochs[0]["valid_loss"]  # it trained


@pytest.mark.parametrize("pos", [0.0, 0.1, 0.2499, 0.25, 0.4, 0.75, 0.999])
def test_plain_one_cycle_is_fastai_fit_one_cycle(pos):
    lr_max = 0.01
    lr, beta1 = one_cycle(pos, lr_max)
    # fastai evaluates the position in float32: near the end (lr ~ 1e-7) that is ~2e-5 relative, 1e-12 absolute
    assert lr == pytest.approx(combined_cos(0.25, lr_max / 25, lr_max, lr_max / 1e5)(pos), rel=1e-5, abs=lr_max * 1e-8)
    assert beta1 == pytest.approx(combined_cos(0.25, *MOMS)(pos), rel=1e-6)


def _side(valid_losses, tokens_per_sec=1000.0, test_accuracy=None, n=100):
    rows = [{"phase": "p", "train_loss": 1.0, "valid_loss": v, "accuracy": 0.5} for v in valid_losses]
    final = {"test_accuracy": test_accuracy, "test_size": n} if test_accuracy is not None else {}
    return Side("x", rows, final, 1.0, int(tokens_per_sec), {"w": torch.zeros(2)})


def test_pair_checks_apply_the_stated_tolerances():
    ok = pair("lm", "lm", _side([4.0, 3.0]), _side([4.05, 3.03]))["checks"]
    assert ok["quality_ok"] and ok["speed_ok"] and ok["same_init"]
    far = pair("lm", "lm", _side([4.0, 3.0], 900.0), _side([4.0, 3.1]))["checks"]
    assert not far["quality_ok"] and not far["speed_ok"] and far["max_valid_loss_rel_diff"] == pytest.approx(0.1 / 3.1)
    clas = pair("c", "classifier", _side([0.5], test_accuracy=0.80, n=2000), _side([0.5], test_accuracy=0.83, n=2000))
    assert clas["checks"]["accuracy_tolerance"] == pytest.approx(max(0.02, 2 * math.sqrt(0.83 * 0.17 / 2000)))
    assert not clas["checks"]["quality_ok"]


@pytest.mark.parametrize("args", [["--set", "precision=bf16"], ["--set", "model.direction=both"],
                                  ["--set", "pretrain.schedule=stlr"], ["--pairs", "bert"]])
def test_settings_it_cannot_compare_are_refused_before_any_work(args, capsys):
    # both sides run fp32, one direction, fit_one_cycle: anything else would compare something else
    assert main(["--preset", "smoke", "--pairs", "gpt", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ulmfit: error: ")

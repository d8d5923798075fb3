"""The LM compute the study matches backbones on (`pipeline.training.flops`): counted, not estimated."""
from __future__ import annotations

import pytest
import torch

from pipeline.config import load_config
from pipeline.data.encoders import WORD_SPECIALS
from pipeline.models.backbones import get_backbone
from pipeline.training.flops import BACKWARD_FACTOR, forward_flops_per_token, lm_flops_metrics

V, T = 500, 16  # vocabulary, sequence length


def _lstm_layers(s) -> list[tuple[int, int]]:
    # fastai's AWD-LSTM: n_layers LSTMs, emb_sz -> n_hid -> ... -> emb_sz (the last one feeds the tied decoder)
    sizes = [s.emb_sz] + [s.n_hid] * (s.n_layers - 1) + [s.emb_sz]
    return list(zip(sizes[:-1], sizes[1:]))


# The textbook forward FLOPs per token (2 per multiply-add), written from the architectures' definitions
EXPECTED = {
    "awd_lstm": lambda s: 2 * (sum(4 * h * (i + h) for i, h in _lstm_layers(s)) + s.emb_sz * V),
    # blocks (QKV + output projection, FFN) + attention's two T x T products + the decoder
    "gpt": lambda s: 2 * (s.n_layers * (4 * s.d_model ** 2 + 2 * s.d_model * s.d_ff) + s.d_model * V)
    + 4 * T * s.d_model * s.n_layers,
    # the same, plus the masked-LM head's dense transform before the decoder
    "bert": lambda s: 2 * (s.n_layers * (4 * s.d_model ** 2 + 2 * s.d_model * s.d_ff) + s.d_model ** 2 + s.d_model * V)
    + 4 * T * s.d_model * s.n_layers,
}


def _arch(name: str, preset: str = "smoke", vocab: int = V):
    cfg = load_config(preset, [f"model.backbone={name}"])
    backbone = get_backbone(name)
    return backbone, backbone.make_arch(vocab, cfg.model, WORD_SPECIALS), cfg.model.sizes()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_forward_flops_are_counted_for_every_layer(name):
    # an LSTM run by oneDNN, or attention by the fused CPU kernel, would be counted as 0 FLOPs and fail this
    backbone, arch, sizes = _arch(name)
    assert forward_flops_per_token(backbone.build_lm(arch), V, T) == EXPECTED[name](sizes)


def test_stage_metrics_count_three_forwards_per_training_token_and_keep_the_rng():
    backbone, arch, _ = _arch("gpt")
    torch.manual_seed(0)
    m = lm_flops_metrics(backbone, arch, T, tokens_read=1000)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))  # counting drew no numbers from the run's generator
    assert m["train_flops"] == BACKWARD_FACTOR * m["forward_flops_per_token"] * 1000


def test_the_cpu_presets_backbones_cost_the_same_per_token():
    # Issue 21: the backbones are compared at equal LM compute. At the same tokens, that is the same FLOPs
    # per token at the stages' bptt (70) over the preset's vocabulary cap (12,000); measured 10.86 / 11.08 /
    # 11.21 MFLOPs (awd_lstm / gpt / bert), BENCHMARKS.md.
    per_token = {name: forward_flops_per_token((b := _arch(name, "cpu", 12000))[0].build_lm(b[1]), 12000, 70)
                 for name in EXPECTED}
    assert max(per_token.values()) / min(per_token.values()) < 1.05, per_token

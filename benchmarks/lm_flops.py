"""Forward FLOPs per token of each backbone's language model at a preset's sizes, counted by torch's
FlopCounterMode (`pipeline.training.flops`), beside the 6 x params estimate: how the backbones compare
at equal LM compute (issue 21). No training; a second or two per backbone.

usage: python benchmarks/lm_flops.py [--preset cpu] [--backbones awd_lstm,gpt,bert] [--vocab 12000] [--seq-len 70]
"""
from __future__ import annotations

import argparse

from pipeline.config import load_config
from pipeline.data.encoders import WORD_SPECIALS
from pipeline.models.backbones import get_backbone
from pipeline.training.flops import BACKWARD_FACTOR, forward_flops_per_token
from pipeline.training.learner import count_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--backbones", default="awd_lstm,gpt,bert")
    ap.add_argument("--vocab", type=int, default=None, help="default: the preset's pretrain.max_vocab")
    ap.add_argument("--seq-len", type=int, default=None, help="default: the preset's pretrain.bptt")
    args = ap.parse_args()
    rows = []
    for name in args.backbones.split(","):
        cfg = load_config(args.preset, [f"model.backbone={name}"])
        vocab, seq_len = args.vocab or cfg.pretrain.max_vocab, args.seq_len or cfg.pretrain.bptt
        backbone = get_backbone(name)
        model = backbone.build_lm(backbone.make_arch(vocab, cfg.model, WORD_SPECIALS))
        rows.append((name, count_params(model), forward_flops_per_token(model, vocab, seq_len)))
    base = rows[0][2]
    print(f"\n{args.preset} preset, vocabulary {vocab:,}, sequence length {seq_len}\n")
    print("| backbone | params | forward MFLOPs/token | training MFLOPs/token (x3) | 6 x params (M) | vs first |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, params, per_token in rows:
        print(f"| {name} | {params / 1e6:.2f} M | {per_token / 1e6:.2f} | {BACKWARD_FACTOR * per_token / 1e6:.2f} | "
              f"{6 * params / 1e6:.2f} | {per_token / base:.3f}x |")


if __name__ == "__main__":
    main()

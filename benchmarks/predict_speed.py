"""Reviews/s of `ulmfit predict` against the same classifier exported to ONNX (`ulmfit export --format
onnx`) and scored by onnxruntime through the export's own score.py, side by side on the same reviews.

usage: python -m benchmarks.predict_speed [RUN ...] [--backbones awd_lstm,gpt,bert] [--n 500]

RUN: run folders with a finished classify stage (predict uses the run's `precision`). Without RUN, one
throwaway run per backbone is trained in fp32 at the `cpu` preset's model sizes, tokenizer and
max_tokens on a tiny slice: speed does not depend on what the weights learned. Both sides score the
same IMDb test reviews end to end (texts in, probabilities out, tokenization included) after a warm-up,
one side at a time; the tokenizer alone is timed too, since both sides run the same one. Labels must
agree, and the largest probability difference is printed.

(An earlier version compared one review per call with batched calls: 7.8x (short reviews) and 3.6x
(long) for batching, identical probabilities; BENCHMARKS.md keeps that table.)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.data.corpora import load_corpus
from pipeline.training.accel import cpu_model
from pipeline.use.predict import Classifier, predict_stream

TINY_CHAIN = ["pretrain.max_docs=4", "pretrain.max_valid_docs=2", "adapt.max_docs=40", "adapt.max_valid_docs=10",
              "classify.n_labels=60", "classify.n_valid=20", "classify.n_test=60", "classify.epochs_per_phase=[1]",
              "classify.lrs=[1e-2]", "classify.min_steps=null", "precision=fp32"]


def throwaway_run(backbone: str, folder: Path) -> Path:
    from pipeline.config import load_config
    from pipeline.stages.context import make_context
    from pipeline.stages.registry import run_stage

    cfg = load_config("cpu", [f"model.backbone={backbone}", *TINY_CHAIN])
    upstream = None
    for stage in ("pretrain", "adapt", "classify"):
        upstream = run_stage(make_context(stage, cfg, folder / stage, upstream)).path
    return folder


def rate(fn, texts: list[str]) -> tuple[float, object]:
    fn(texts[:8])  # warm-up: model load, first-call allocations
    start = time.perf_counter()
    result = fn(texts)
    return len(texts) / (time.perf_counter() - start), result


def compare(run: Path, texts: list[str], folder: Path) -> str:
    from flows.cli import main as ulmfit

    out = folder / f"onnx-{run.name}"
    assert ulmfit(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    sys.path.insert(0, str(out))
    from score import Scorer  # the export's own script
    sys.path.remove(str(out))
    sys.modules.pop("score")

    clf = Classifier(run)
    tokenize_rate, _ = rate(lambda batch: clf.encoder.encode(batch, cache=False), texts)
    ours_rate, ours = rate(lambda batch: list(predict_stream(run, batch)), texts)
    scorer = Scorer(out)
    onnx_rate, theirs = rate(scorer.probs, texts)
    same = [label for _, label, _ in ours] == [scorer.classes[k] for k in theirs.argmax(axis=1)]
    diff = float(np.abs(np.array([p for _, _, p in ours]) - theirs.max(axis=1)).max())
    name = clf.model_file.backbone
    return (f"| {name} | {clf.encoder.state()['kind']} | {clf.precision} | {tokenize_rate:.0f} | {ours_rate:.1f} "
            f"| {onnx_rate:.1f} | {onnx_rate / ours_rate:.2f}x | {'yes' if same else 'NO'} | {diff:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--backbones", default="awd_lstm,gpt,bert", help="throwaway runs (without RUN)")
    parser.add_argument("--n", type=int, default=500, help="IMDb test reviews")
    args = parser.parse_args()
    texts = load_corpus("imdb", "test")["text"].sample(args.n, random_state=0).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runs = args.runs or [throwaway_run(b, folder / b) for b in args.backbones.split(",")]
        print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.n} IMDb test "
              f"reviews, end to end (texts in, probabilities out)\n")
        print("| backbone | tokenizer | predict precision | tokenizer alone (reviews/s) | `ulmfit predict` (reviews/s) "
              "| onnxruntime (reviews/s) | onnx / predict | same labels | max prob. difference |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for run in runs:
            print(compare(run, texts, folder), flush=True)


if __name__ == "__main__":
    main()

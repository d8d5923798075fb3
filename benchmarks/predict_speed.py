"""Reviews/s of `ulmfit predict`: one review at a time (the old path) vs batched (the current one).

Both sides score the same IMDb test reviews with the same classifier (`pipeline.predict.Classifier`),
so the only difference is the batching: one `probs([text])` call per review, against one `probs(texts)`
call per TEXTS_PER_STEP reviews (what `predict_stream` does). Short and long reviews are timed
separately, since the batched loader's gain depends on how much padding it saves. The two sides must
give the same probabilities (checked, to bf16/fp32 rounding): batching changes speed, not results.

usage: python -m benchmarks.predict_speed RUN [--n 200] [--short-chars 600] [--long-chars 3000]
       (RUN: a run folder with a finished classify stage, e.g. runs/cpu)
"""
from __future__ import annotations

import argparse
import time

import torch

from pipeline.data import load_corpus
from pipeline.predict import TEXTS_PER_STEP, Classifier


def pick_reviews(n: int, short_chars: int, long_chars: int) -> dict[str, list[str]]:
    texts = load_corpus("imdb", "test")["text"]
    lengths = texts.str.len()
    return {f"short (< {short_chars} chars)": texts[lengths < short_chars].head(n).tolist(),
            f"long (> {long_chars} chars)": texts[lengths > long_chars].head(n).tolist()}


def one_at_a_time(clf: Classifier, texts: list[str]) -> torch.Tensor:
    return torch.cat([clf.probs([t]) for t in texts])


def batched(clf: Classifier, texts: list[str]) -> torch.Tensor:
    return torch.cat([clf.probs(texts[i:i + TEXTS_PER_STEP]) for i in range(0, len(texts), TEXTS_PER_STEP)])


def timed(fn, clf: Classifier, texts: list[str]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    probs = fn(clf, texts)
    return len(texts) / (time.perf_counter() - start), probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--n", type=int, default=200, help="reviews per length class")
    parser.add_argument("--short-chars", type=int, default=600)
    parser.add_argument("--long-chars", type=int, default=3000)
    args = parser.parse_args()
    clf = Classifier(args.run)
    clf.probs(["A warm-up review, so start-up costs are not timed."])
    print(f"classifier: {clf.model_file.config['model']['backbone']}, precision {clf.precision}, "
          f"max_tokens {clf.cc.max_tokens}, {torch.get_num_threads()} threads\n")
    print("| reviews | n | one at a time (reviews/s) | batched (reviews/s) | speed-up | max prob. difference |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, texts in pick_reviews(args.n, args.short_chars, args.long_chars).items():
        single_rate, single_probs = timed(one_at_a_time, clf, texts)
        batch_rate, batch_probs = timed(batched, clf, texts)
        diff = float((single_probs - batch_probs).abs().max())
        print(f"| {name} | {len(texts)} | {single_rate:.1f} | {batch_rate:.1f} | {batch_rate / single_rate:.1f}x "
              f"| {diff:.1e} |")


if __name__ == "__main__":
    main()

"""Cosine similarity of sentiment word pairs in language models' input embeddings.

Why: at the `cpu` preset's scale a classifier on a random encoder beats the transferred one
(BENCHMARKS.md, the tuning log). An LM learns which words occur in the same contexts, and antonyms
do, so its embeddings may put *good* and *bad* close together before the classifier starts. This
prints, for each stage folder given (an `adapt/` or `pretrain/` folder with a `model.pt`), the cosine
of each pair's rows of the input embedding, next to the mean over 2,000 random word pairs.

With --moved ADAPT CLASSIFY it prints instead how far fine-tuning moved the input embedding:
||after - before|| / ||before|| between an adapt folder and the classify folder built on it.

usage: python -m benchmarks.embedding_pairs runs/cpu/adapt runs/tune/R-gu4-dec1.5/adapt
       python -m benchmarks.embedding_pairs --moved runs/cpu/adapt runs/cpu/classify
"""
from __future__ import annotations

import argparse

import torch

from pipeline.artifacts.model_file import load_model_file

PAIRS = [("good", "bad"), ("great", "terrible"), ("best", "worst"), ("excellent", "awful"), ("love", "hate"),
         ("good", "great"), ("bad", "awful")]


def input_embedding(state_dict: dict) -> torch.Tensor:
    return next(v for k, v in state_dict.items() if k.endswith(("encoder.weight", "word_embeddings.weight", "wte.weight")))


def pair_cosines(folder: str) -> tuple[float, dict[str, float]]:
    mf = load_model_file(folder)
    stoi = {w: i for i, w in enumerate(mf.vocab)}
    emb = input_embedding(mf.state_dict)
    unit = torch.nn.functional.normalize(emb.float(), dim=1)
    idx = torch.randint(10, len(mf.vocab), (2, 2000), generator=torch.Generator().manual_seed(0))
    random_pairs = float((unit[idx[0]] * unit[idx[1]]).sum(1).mean())
    return random_pairs, {f"{a}/{b}": float(unit[stoi[a]] @ unit[stoi[b]]) for a, b in PAIRS
                          if a in stoi and b in stoi}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--moved", action="store_true", help="folders are ADAPT CLASSIFY: print the relative change")
    args = parser.parse_args()
    if args.moved:
        before, after = (input_embedding(load_model_file(f).state_dict).float() for f in args.folders[:2])
        print(f"input embedding moved by {float((after - before).norm() / before.norm()):.3f} of its norm")
        return
    rows = [(f, *pair_cosines(f)) for f in args.folders]
    names = list(rows[0][2])
    print("| model | random pairs | " + " | ".join(names) + " |")
    print("| --- " * (len(names) + 2) + "|")
    for folder, random_pairs, cos in rows:
        print(f"| `{folder}` | {random_pairs:.2f} | " + " | ".join(f"{cos.get(n, float('nan')):.2f}" for n in names) + " |")


if __name__ == "__main__":
    main()

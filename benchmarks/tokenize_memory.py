"""Peak memory and throughput of tokenization: ours (`tokenize_cached`, streaming) against
fastai's `tokenize_df`, on the same text, one after the other in one run.

usage: python benchmarks/tokenize_memory.py [--mb 100] [--workers 2] [--methods ours,fastai]

The text is IMDb (unsup, train, test) and WikiText-103 (valid, test) documents from
$ULMFIT_DATA_DIR, repeated until it reaches --mb megabytes (10^6 characters). Each method runs
in a fresh child process; the parent samples the memory of that process and all its
descendants (tokenizer workers) every 0.2 s:
  - peak RSS, summed over the process tree (counts pages shared between processes once per process,
    so it over-states; this is the figure the 2 GB goal is checked against);
  - peak PSS, summed (shared pages split between the processes that map them: the closer estimate).
Words are whitespace-separated words of the input (the same count for both methods); words/s is
that count over the wall time of the tokenization call, worker start-up included.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil


def build_text(mb: float, out: Path) -> dict:
    from pipeline.data.corpora import load_corpus, resolve_data_dir

    data_dir = resolve_data_dir()
    docs = []
    for name, split in [("imdb", "unsup"), ("imdb", "train"), ("imdb", "test"),
                        ("wikitext-103", "valid"), ("wikitext-103", "test")]:
        docs += load_corpus(name, split, data_dir=data_dir, download=False)["text"].tolist()
    target, texts, size = mb * 1e6, [], 0
    while size < target:
        for doc in docs:
            texts.append(doc)
            size += len(doc)
            if size >= target:
                break
    pd.DataFrame({"text": texts}).to_parquet(out)
    return {"docs": len(texts), "chars": size}


def child(method: str, path: Path, workers: int) -> None:
    import resource

    texts = pd.read_parquet(path)["text"].tolist()
    words = sum(len(t.split()) for t in texts)
    start = time.perf_counter()
    if method == "ours":
        from pipeline.data.word_tokens import tokenize_cached

        with tempfile.TemporaryDirectory() as cache:
            corpus = tokenize_cached(texts, Path(cache), n_workers=workers)
            n_tokens = corpus.n_tokens
            secs = time.perf_counter() - start
    else:
        from fastai.text.core import tokenize_df

        tokenized, counter = tokenize_df(pd.DataFrame({"text": texts}), "text", n_workers=workers)
        n_tokens = int(tokenized["text_length"].sum())
        secs = time.perf_counter() - start
    print(json.dumps({"method": method, "words": words, "tokens": n_tokens, "seconds": secs,
                      "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "children_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def _tree_memory(proc: psutil.Process) -> tuple[int, int]:
    rss = pss = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            info = p.memory_full_info()
            rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return rss, pss


def measure(method: str, path: Path, workers: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, __file__, "--child", method, "--input", str(path),
                             "--workers", str(workers)], stdout=subprocess.PIPE, env=env, text=True)
    peak = {"rss": 0, "pss": 0}
    handle = psutil.Process(proc.pid)

    def sample():
        while proc.poll() is None:
            try:
                rss, pss = _tree_memory(handle)
            except psutil.NoSuchProcess:
                break
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed with exit status {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "peak_tree_rss_mb": peak["rss"] / 2**20, "peak_tree_pss_mb": peak["pss"] / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", default="ours,fastai")
    parser.add_argument("--child")
    parser.add_argument("--input")
    args = parser.parse_args()
    if args.child:
        return child(args.child, Path(args.input), args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "text.parquet"
        info = build_text(args.mb, path)
        print(f"text: {info['chars'] / 1e6:.1f} M characters in {info['docs']:,} documents, "
              f"{args.workers} worker processes", flush=True)
        rows = []
        for method in args.methods.split(","):
            rows.append(measure(method, path, args.workers))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| method | words | tokens | seconds | words/s | peak RSS, process tree (MB) | peak PSS, process tree (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    names = {"ours": "ours (`tokenize_cached`, streaming)", "fastai": "fastai `tokenize_df`"}
    for r in rows:
        print(f"| {names.get(r['method'], r['method'])} | {r['words']:,} | {r['tokens']:,} | {r['seconds']:.0f} | "
              f"{r['words'] / r['seconds']:,.0f} | {r['peak_tree_rss_mb']:,.0f} | {r['peak_tree_pss_mb']:,.0f} |")


if __name__ == "__main__":
    main()

"""Orchestration overhead: our pretrain stage vs a bare fastai loop on the same model and data.

Both sides train the same AWD-LSTM LM (same sizes, vocabulary, LMDataLoader, bs, bptt, epochs,
one-cycle LR, Adam(sqr_mom=0.99), AR/TAR callbacks) on the same pre-tokenized text (the token
cache is warmed first, so neither side tokenizes). They run alternately, ROUNDS times, in one
process, so the machine's background load hits both alike.

- bare: texts -> encoder -> LMDataLoader -> plain fastai Learner -> fit_one_cycle -> validate.
- ours: `pipeline.stages.pretrain.run` (what the Prefect task runs): the same, plus our Learner
  set-up, per-epoch logging and history, a final evaluation, sampled text for the card, the
  loss plot and the atomic artifact folder with its manifest.

overhead = (ours - bare) / bare, per round and on the medians. Prefect's own per-run cost
(server start-up, cache lookups) is what the cached-rerun benchmark measures.

usage: python benchmarks/overhead.py [--preset cpu] [--rounds 3] [--warmup 1] [--set pretrain.max_docs=30 ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from functools import partial

from fastai.callback.progress import ProgressCallback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import Perplexity, accuracy
from fastai.optimizer import Adam
from fastai.text.all import AWD_LSTM, awd_lstm_lm_config, awd_lstm_lm_split, get_language_model, rnn_cbs
from fastai.text.data import LMDataLoader

from pipeline.config import load_config
from pipeline.data.encoders import fit_encoder
from pipeline.stages import pretrain
from pipeline.stages.context import make_context
from pipeline.training.learner import seed_everything
from pipeline.training.lm import lm_data


def bare(cfg) -> float:
    """The textbook fastai loop, timed from raw texts to validation, as the stage is."""
    start = time.perf_counter()
    pc, sizes = cfg.pretrain, cfg.model.awd_lstm
    seed_everything(cfg.seed)
    train_texts, valid_texts = pretrain.corpus_texts(cfg)
    encoder = fit_encoder(cfg.tokenizer, train_texts, pc.min_freq, pc.max_vocab, cfg.cache_dir, f"{pc.corpus}/train")
    data = lm_data(encoder, train_texts, valid_texts, pc.corpus)
    config = {**awd_lstm_lm_config, "emb_sz": sizes.emb_sz, "n_hid": sizes.n_hid, "n_layers": sizes.n_layers}  # as pipeline.models.backbones._awd_lm
    model = get_language_model(AWD_LSTM, len(encoder.itos), config=config, drop_mult=cfg.model.drop_mult)
    dls = DataLoaders(LMDataLoader(data.train, bs=pc.bs, seq_len=pc.bptt, shuffle=True),
                      LMDataLoader(data.valid, bs=min(pc.bs, (data.n_valid_tokens - 1) // (pc.bptt + 1)), seq_len=pc.bptt))
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), opt_func=partial(Adam, sqr_mom=0.99),
                    splitter=awd_lstm_lm_split, cbs=rnn_cbs(alpha=2.0, beta=1.0), metrics=[accuracy, Perplexity()],
                    wd=pc.wd, moms=(0.8, 0.7, 0.8))
    learn.remove_cb(ProgressCallback)  # fair: ours has no progress bars either
    learn.logger = lambda *_: None
    learn.fit_one_cycle(pc.epochs, pc.lr)
    return time.perf_counter() - start


def ours(cfg, out_dir: str) -> float:
    start = time.perf_counter()
    pretrain.run(make_context("pretrain", cfg, out_dir, cache_key="bench"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (first-call costs: lazy imports, allocator)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(args.preset, ["model.backbone=awd_lstm", *args.overrides])
    pc = cfg.pretrain
    texts, _ = pretrain.corpus_texts(cfg)
    fit_encoder(cfg.tokenizer, texts, pc.min_freq, pc.max_vocab, cfg.cache_dir, "warm-up")  # warm the token cache
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(-args.warmup, args.rounds):
            # alternate which side goes first, so a load change mid-run does not favour one side
            order = [("bare", lambda: bare(cfg)), ("ours", lambda: ours(cfg, f"{tmp}/r{i}"))]
            times = dict((name, fn()) for name, fn in (order if i % 2 == 0 else order[::-1]))
            times["overhead"] = times["ours"] / times["bare"] - 1
            if i >= 0:
                rows.append(times)
            print(json.dumps({"round": i if i >= 0 else "warm-up", **{k: round(v, 3) for k, v in times.items()}}), flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in ("bare", "ours")}
    print(json.dumps({"median_bare_s": round(med["bare"], 2), "median_ours_s": round(med["ours"], 2),
                      "overhead_of_medians": round(med["ours"] / med["bare"] - 1, 4)}))


if __name__ == "__main__":
    main()

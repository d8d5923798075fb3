"""fastai's published AWD-LSTM as stage 1 (issue 22): `pretrain.init_from=wt103-fwd`.

No network: an archive in exactly the model zoo's layout is built with fastai itself (a language
model learner at the published 400/1152/3 on a small vocabulary; its state dict and vocabulary
pickle as `lstm_fwd.pth` and `itos_wt103.pkl`), served on a loopback mirror, downloaded, checked
and imported by the pipeline, and compared with fastai's own `load_pretrained` of the same files.
Then stages 2 and 3 run from it on the smoke slices. The vocabulary pickle is never unpickled
with code: a payload is refused without running.
"""
from __future__ import annotations

import functools
import http.server
import os
import pickle
import tarfile
import threading

import pytest
import torch

SENTENCES = ["The film was released in 1998 .", "He played for the club until his death .",
             "It is one of the largest cities in the region ."]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, data_dir):
    """fastai's zoo files made by fastai, packed as wt103-fwd.tgz and served on a loopback mirror."""
    from fastai.text.all import AWD_LSTM, TextDataLoaders, awd_lstm_lm_config, language_model_learner

    from pipeline.data.corpora import load_corpus

    root = tmp_path_factory.mktemp("zoo")
    import pandas as pd

    texts = load_corpus("wikitext-2", "train", data_dir=data_dir)["text"].tolist()[:40]
    dls = TextDataLoaders.from_df(pd.DataFrame({"text": texts}), text_col="text", is_lm=True, valid_pct=0.1,
                                  bs=8, seq_len=20, seed=0)
    learn = language_model_learner(dls, AWD_LSTM, config=dict(awd_lstm_lm_config), pretrained=False, path=root)
    folder = root / "files" / "wt103-fwd"
    folder.mkdir(parents=True)
    learn.create_opt()  # saved as fastai saves a learner, optimizer state (fastcore objects) included
    learn.save("lstm_fwd", with_opt=True)
    (root / "models" / "lstm_fwd.pth").rename(folder / "lstm_fwd.pth")
    with open(folder / "itos_wt103.pkl", "wb") as fh:
        pickle.dump(list(dls.vocab), fh)
    serve = root / "srv"
    serve.mkdir()
    with tarfile.open(serve / "wt103-fwd.tgz", "w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname="wt103-fwd")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(serve)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield {"folder": folder, "vocab": list(dls.vocab), "dls": dls, "mirror": f"http://127.0.0.1:{server.server_port}"}
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def from_zoo(zoo, tmp_path_factory):
    """The pipeline's stages 1-3 from `init_from=wt103-fwd` on the smoke slices (stage 1: evaluate only)."""
    from pipeline.config import load_config
    from pipeline.stages.context import make_context
    from pipeline.stages.registry import run_stage
    from pipeline.validate import check_run

    root = tmp_path_factory.mktemp("from-zoo")
    os.environ["ULMFIT_MIRROR"] = zoo["mirror"]
    try:
        # Smaller slices than smoke's: the published size (~20 M parameters here) is slow on 2 cores.
        cfg = load_config("smoke", ["pretrain.init_from=wt103-fwd", "pretrain.epochs=0", "pretrain.max_valid_docs=1",
                                    "adapt.max_docs=16", "adapt.max_valid_docs=4", "adapt.frozen_epochs=0",
                                    "classify.n_labels=20", "classify.n_valid=10", "classify.n_test=20",
                                    "classify.baselines=false", f"cache_dir={root / 'cache'}"])
        check_run(cfg, root / "run")  # downloads, unpacks and reads the vocabulary before any stage
        upstream = None
        for stage in ("pretrain", "adapt", "classify"):
            upstream = run_stage(make_context(stage, cfg, root / "run" / stage, upstream)).path
    finally:
        del os.environ["ULMFIT_MIRROR"]
    return {"cfg": cfg, "run": root / "run", "cache": root / "cache"}


@pytest.mark.slow
def test_the_published_archive_is_downloaded_once_into_the_cache(from_zoo):
    unpacked = from_zoo["cache"] / "models" / "wt103-fwd"
    assert sorted(p.name for p in unpacked.iterdir()) == ["itos_wt103.pkl", "lstm_fwd.pth"]
    assert not list((from_zoo["cache"] / "models").glob("*.tgz"))  # the archive goes once unpacked


@pytest.mark.slow
def test_stage_1_from_the_zoo_scores_as_fastai_loads_it(zoo, from_zoo):
    """Next-token log-probabilities of our stage-1 model against fastai's own loading of the same files."""
    from fastai.text.all import AWD_LSTM, awd_lstm_lm_config, language_model_learner

    from pipeline.artifacts.model_file import load_model_file
    from pipeline.data.encoders import encoder_from_state
    from pipeline.models.backbones import get_backbone

    saved = load_model_file(from_zoo["run"] / "pretrain")
    assert saved.arch | {"drop_mult": 0} == {"vocab_size": len(zoo["vocab"]), "emb_sz": 400, "n_hid": 1152,
                                             "n_layers": 3, "drop_mult": 0}
    assert saved.vocab == zoo["vocab"] and saved.config["pretrain"]["init_from"] == "wt103-fwd"
    ours = get_backbone("awd_lstm").build_lm(saved.arch)
    ours.load_state_dict(saved.state_dict)
    learn = language_model_learner(zoo["dls"], AWD_LSTM, config=dict(awd_lstm_lm_config), pretrained=False)
    learn.load_pretrained(zoo["folder"] / "lstm_fwd.pth", zoo["folder"] / "itos_wt103.pkl")  # fastai's way
    encoder = encoder_from_state(saved.tokenizer, saved.vocab)
    for model in (ours, learn.model):
        model.eval()
    # fastai pads its vocabulary to a multiple of 8 with repeated "xxfake" tokens, and its match_embeds
    # gives every repeat the last one's row: those columns are padding, never a real next token.
    real = torch.tensor([token != "xxfake" for token in saved.vocab])
    with torch.no_grad():
        for ids in encoder.encode(SENTENCES, cache=False):
            batch = torch.as_tensor(ids)[None]
            logp = []
            for model in (ours, learn.model):
                model.reset()
                logp.append(torch.log_softmax(model(batch)[0].float()[..., real], -1))
            assert torch.allclose(logp[0], logp[1], atol=1e-5), (logp[0] - logp[1]).abs().max()


@pytest.mark.slow
def test_stages_2_and_3_run_from_the_published_model(from_zoo):
    from pipeline.artifacts.stage_folder import read_metrics

    pre, ada, cla = (read_metrics(from_zoo["run"] / s) for s in ("pretrain", "adapt", "classify"))
    assert pre["epochs"] == 0 and pre["init_source"].startswith("wt103-fwd: fastai's AWD-LSTM")
    assert pre["init_source"].endswith("https://s3.amazonaws.com/fast-ai-modelzoo/wt103-fwd.tgz")
    assert "starting from wt103-fwd" in (from_zoo["run"] / "pretrain" / "card.md").read_text()
    assert ada["held_out_perplexity_after"] < ada["held_out_perplexity_before"]
    assert 0 < cla["test_accuracy"] <= 1


def test_a_vocabulary_pickle_that_would_run_code_is_refused(tmp_path):
    from pipeline.errors import ArtifactError
    from pipeline.models.zoo import read_vocab_pickle

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "itos_wt103.pkl"
    path.write_bytes(pickle.dumps(["xxunk", "xxpad", Payload()]))
    with pytest.raises(ArtifactError, match=r"refers to (posix|os).system\); refusing it"):
        read_vocab_pickle(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"xxunk": 0}))
    with pytest.raises(ArtifactError, match="expected a non-empty list of strings, got dict"):
        read_vocab_pickle(path)


def test_a_plain_state_dict_loads_too(tmp_path):
    from fastai.text.all import AWD_LSTM, awd_lstm_lm_config, get_language_model

    from pipeline.models.zoo import load_fastai_lm

    vocab = ["xxunk", "xxpad", "xxbos", "the", "film"]
    model = get_language_model(AWD_LSTM, len(vocab), config={**awd_lstm_lm_config, "emb_sz": 8, "n_hid": 16})
    torch.save(model.state_dict(), tmp_path / "lstm_fwd.pth")
    (tmp_path / "itos.pkl").write_bytes(pickle.dumps(vocab))
    state, loaded, _ = load_fastai_lm(tmp_path)
    assert loaded == vocab and torch.equal(state["1.decoder.weight"], model.state_dict()["1.decoder.weight"])


def test_a_backward_run_takes_the_backward_twin():
    from pipeline.models.zoo import _for_direction, registry

    models = registry()
    assert _for_direction("wt103-fwd", models["wt103-fwd"], "backward") == "wt103-bwd"
    assert _for_direction("wt103-bwd", models["wt103-bwd"], "forward") == "wt103-fwd"
    assert models["wt103-bwd"]["url"].endswith("/fast-ai-modelzoo/wt103-bwd.tgz")


def test_a_folder_without_the_zoo_files_is_one_error(tmp_path):
    from pipeline.config import load_config
    from pipeline.errors import UlmfitError
    from pipeline.validate import check_settings

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "lstm_fwd.pth").write_bytes(b"")
    cfg = load_config("smoke", [f"pretrain.init_from={tmp_path / 'model'}"])
    with pytest.raises(UlmfitError, match=r"one state dict \(\*.pth\) and one vocabulary \(\*.pkl\)"):
        check_settings(cfg)

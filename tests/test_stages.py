"""Each stage on small real slices (the smoke preset), called directly without Prefect."""
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline.artifacts.model_file import load_model_file
from pipeline.artifacts.stage_folder import is_complete, read_metrics
from pipeline.config import load_config
from pipeline.errors import ArtifactError, DataError
from pipeline.stages import adapt, classify, pretrain
from pipeline.stages.context import make_context
from pipeline.stages.registry import get_stage
from pipeline.use.predict import predict

ARTIFACT_FILES = {"model.pt", "metrics.json", "history.csv", "history.png", "card.md", "manifest.json"}
TITLES = {"pretrain": "# Stage 1: pretrained language model",
          "adapt": "# Stage 2: language model adapted to the target domain", "classify": "# Stage 3: classifier"}


def ctx(stage, cfg, out, upstream=None):
    return make_context(stage, cfg, out, upstream)


@pytest.fixture(scope="module")
def results(tmp_path_factory, data_dir):
    """pretrain -> adapt -> classify once on the smoke preset: {stage: StageResult}."""
    root = tmp_path_factory.mktemp("stages")
    cfg = load_config("smoke")
    p = pretrain.run(ctx("pretrain", cfg, root / "pretrain"))
    a = adapt.run(ctx("adapt", cfg, root / "adapt", p.path))
    c = classify.run(ctx("classify", cfg, root / "classify", a.path))
    return {"pretrain": p, "adapt": a, "classify": c}


@pytest.fixture(scope="module")
def run_dir(results):
    return Path(results["pretrain"].path).parent


@pytest.mark.parametrize("stage", ["pretrain", "adapt", "classify"])
def test_stage_folder_is_self_describing(run_dir, results, stage):
    folder = run_dir / stage
    assert ARTIFACT_FILES <= {p.name for p in folder.iterdir()}
    assert is_complete(folder)
    blob = torch.load(folder / "model.pt", weights_only=True)
    assert blob["backbone"] == "awd_lstm" and blob["vocab"][:3] == ["xxunk", "xxpad", "xxbos"]
    assert all(isinstance(v, torch.Tensor) for v in blob["state_dict"].values())
    assert len(pd.read_csv(folder / "history.csv")) >= 1
    card = (folder / "card.md").read_text()
    key = get_stage(stage).headline[0]
    assert card.startswith(TITLES[stage] + "\n") and "![loss curves](history.png)" in card
    assert f"| {key} | {results[stage].metrics[key]:,.4f} |" in card  # the metric table holds the real number
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_pretrain_metrics(run_dir):
    m = read_metrics(run_dir / "pretrain")
    assert 1 < m["valid_perplexity"] < m["vocab_size"]
    assert 0 <= m["valid_accuracy"] <= 1 and m["train_tokens"] > 1000
    # the LM compute the study compares backbones on (pipeline/training/flops.py)
    assert m["forward_flops_per_token"] > 2 * m["vocab_size"]  # at least the decoder's
    assert m["train_flops"] == 3 * m["forward_flops_per_token"] * m["epochs"] * m["train_tokens"]


def test_adapt_improves_held_out_perplexity(run_dir):
    m = read_metrics(run_dir / "adapt")
    assert m["held_out_perplexity_after"] < m["held_out_perplexity_before"]
    assert 0 < m["vocab_known_from_pretrain"] < m["vocab_size"]


def test_adapt_transfers_known_embeddings(tmp_path, data_dir):
    cfg = load_config("smoke", ["adapt.frozen_epochs=0", "adapt.epochs=0", "pretrain.epochs=0"])
    p = pretrain.run(ctx("pretrain", cfg, tmp_path / "p"))
    a = adapt.run(ctx("adapt", cfg, tmp_path / "a", p.path))
    old, new = load_model_file(p.path), load_model_file(a.path)
    shared = [t for t in new.vocab if t in old.vocab][:20]
    for tok in shared:
        assert torch.equal(old.state_dict["0.encoder.weight"][old.vocab.index(tok)],
                           new.state_dict["0.encoder.weight"][new.vocab.index(tok)])


def test_classify_metrics_and_confusion(run_dir):
    m = read_metrics(run_dir / "classify")
    cfg = load_config("smoke")
    assert m["test_size"] == cfg.classify.n_test and m["n_labels"] == cfg.classify.n_labels
    assert 0 <= m["test_accuracy"] <= 1 and m["classes"] == ["neg", "pos"]
    assert sum(map(sum, m["confusion_matrix"])) == m["test_size"]
    hist = pd.read_csv(run_dir / "classify" / "history.csv")
    assert len(hist) == sum(cfg.classify.epochs_per_phase)


def test_predict(run_dir):
    out = predict(run_dir, ["A wonderful film.", "Dull and boring.", "A wonderful film."])
    assert all(label in ("neg", "pos") for label, _ in out)
    assert out[0] == out[2]  # deterministic: the model runs in eval mode, its state reset per text
    assert out[0][1] != out[1][1]  # the probability depends on the text read


@pytest.mark.parametrize("bad", ["", "   "])
def test_predict_rejects_empty_text(run_dir, bad):
    with pytest.raises(DataError, match="empty"):
        predict(run_dir, [bad])


def test_predict_rejects_missing_or_foreign_run(run_dir, tmp_path):
    with pytest.raises(ArtifactError, match="no such run"):
        predict(tmp_path / "nope", ["text"])
    with pytest.raises(ArtifactError):
        predict(tmp_path, ["text"])
    with pytest.raises(ArtifactError, match="expected 'classifier'"):
        predict(run_dir / "adapt", ["text"])


def test_adapt_from_missing_pretrain_dir(tmp_path, smoke_cfg):
    with pytest.raises(ArtifactError, match="model.pt"):
        adapt.run(ctx("adapt", smoke_cfg, tmp_path / "adapt", tmp_path / "missing"))
    assert not (tmp_path / "adapt").exists()


def _user_csv(tmp_path, data_dir, n=120):
    frame = pd.read_parquet(data_dir / "imdb" / "train.parquet").sample(n, random_state=0)
    path = tmp_path / "reviews.csv"
    frame.rename(columns={"text": "review", "label": "sentiment"}).to_csv(path, index=False)
    return path


def test_users_own_csv_through_adapt_and_classify(run_dir, tmp_path, data_dir):
    path = _user_csv(tmp_path, data_dir)
    cfg = load_config("smoke", [f"adapt.corpus={path}", "adapt.text_col=review", f"classify.corpus={path}",
                                "classify.text_col=review", "classify.label_col=sentiment",
                                "classify.n_labels=40", "classify.n_valid=10", "classify.n_test=null"])
    a = adapt.run(ctx("adapt", cfg, tmp_path / "adapt", run_dir / "pretrain"))
    c = classify.run(ctx("classify", cfg, tmp_path / "classify", a.path))
    assert c.metrics["test_size"] == 24 and "held out" in c.metrics["test_source"]


@pytest.mark.parametrize("overrides, message", [
    (["classify.label_col=sentiment_typo"], "sentiment_typo"),
    (["classify.n_labels=100000"], "n_labels"),
])
def test_classify_bad_input_writes_nothing(run_dir, tmp_path, data_dir, overrides, message):
    path = _user_csv(tmp_path, data_dir)
    base = [f"classify.corpus={path}", "classify.text_col=review", "classify.label_col=sentiment"]
    cfg = load_config("smoke", base + overrides)
    with pytest.raises(DataError, match=message):
        classify.run(ctx("classify", cfg, tmp_path / "classify", run_dir / "adapt"))
    assert not (tmp_path / "classify").exists()


def test_classify_one_class_only(run_dir, tmp_path, data_dir):
    frame = pd.read_parquet(data_dir / "imdb" / "train.parquet").head(50)  # all 'neg'
    frame.to_csv(tmp_path / "one.csv", index=False)
    cfg = load_config("smoke", [f"classify.corpus={tmp_path / 'one.csv'}"])
    with pytest.raises(DataError, match="one class|only"):
        classify.run(ctx("classify", cfg, tmp_path / "classify", run_dir / "adapt"))
    assert not (tmp_path / "classify").exists()


def test_test_labels_unseen_in_train(run_dir, tmp_path, data_dir):
    train = _user_csv(tmp_path, data_dir)
    test = pd.read_csv(train).assign(sentiment="meh")
    test.to_csv(tmp_path / "test.csv", index=False)
    cfg = load_config("smoke", [f"classify.corpus={train}", f"classify.test_corpus={tmp_path / 'test.csv'}",
                                "classify.text_col=review", "classify.label_col=sentiment", "classify.n_labels=40",
                                "classify.n_valid=10", "classify.n_test=null"])
    with pytest.raises(DataError, match="meh"):
        classify.run(ctx("classify", cfg, tmp_path / "classify", run_dir / "adapt"))


def test_metrics_json_holds_what_the_stage_returned(run_dir, results):
    for stage, result in results.items():
        assert result.path == str(run_dir / stage)
        assert read_metrics(run_dir / stage) == result.metrics  # plain JSON, nothing lost or rounded


def test_pretrain_can_hold_out_training_articles(tmp_path, data_dir):
    cfg = load_config("smoke", ["pretrain.valid_split=null", "pretrain.max_valid_docs=1"])
    from pipeline.stages.pretrain import corpus_texts

    train, valid = corpus_texts(cfg)
    assert len(valid) == 1 and len(train) == cfg.pretrain.max_docs and valid[0] not in train


@pytest.mark.parametrize("epochs,batches,min_steps,expected", [
    ([1, 1, 1, 4], 4, 200, [8, 8, 8, 32]),   # 100 labels at batch 32: 28 steps -> 224
    ([1, 1, 1, 4], 32, 200, [1, 1, 1, 4]),   # 1,000 labels: 224 steps already
    ([1, 2], 3, 10, [2, 4]),                 # 9 steps -> 18: the smallest whole factor
    ([1, 2], 3, None, [1, 2])])
def test_min_steps_scales_every_phase_alike(epochs, batches, min_steps, expected):
    from pipeline.config import ClassifyConfig
    from pipeline.stages.classify import phase_epochs

    cc = ClassifyConfig(epochs_per_phase=epochs, lrs=[1e-2] * len(epochs), min_steps=min_steps)
    assert phase_epochs(cc, batches) == expected


def test_classifier_trains_at_least_min_steps(run_dir, tmp_path, data_dir):
    cfg = load_config("smoke", ["classify.min_steps=30", "classify.baselines=false"])
    metrics = classify.run(ctx("classify", cfg, tmp_path / "classify", run_dir / "adapt")).metrics
    # smoke: 60 labels at batch 16 = 4 batches an epoch, 1 + 1 epochs = 8 steps -> x4 = 32 steps
    assert metrics["epochs_per_phase"] == [4, 4] and metrics["optimizer_steps"] == 32 and metrics["epochs"] == 8
    history = pd.read_csv(tmp_path / "classify" / "history.csv")
    assert len(history) == 8


def test_pretrain_auto_takes_the_valid_split_where_the_data_has_one(results, data_dir):
    from pipeline.stages.pretrain import valid_split

    cfg = load_config("smoke")
    assert cfg.pretrain.valid_split == "auto" and valid_split(cfg) == "valid"  # ../shared/data has valid.parquet
    assert results["pretrain"].metrics["valid_source"] == f"{cfg.pretrain.max_valid_docs} wikitext-2/valid articles"


def test_pretrain_missing_valid_split_suggests_hold_out(tmp_path, data_dir):
    cfg = load_config("smoke", ["pretrain.valid_split=nosuch"])
    with pytest.raises(DataError, match="valid_split=null"):
        pretrain.run(ctx("pretrain", cfg, tmp_path / "p"))
    assert not (tmp_path / "p").exists()


def test_notebooks_see_the_test_sample_the_stage_saw(run_dir, tmp_path, data_dir, monkeypatch):
    """The classifier records the rows of its samples; inspect reads them from the run's own data folder,
    whatever seed or $ULMFIT_DATA_DIR are in effect later."""
    from pipeline.stages.classify_data import load_splits
    from pipeline.use import inspection

    cfg = load_config("smoke", ["seed=7"])
    classify.run(ctx("classify", cfg, tmp_path / "run" / "classify", run_dir / "adapt"))
    monkeypatch.setenv("ULMFIT_DATA_DIR", str(tmp_path / "elsewhere"))
    sample = inspection.test_sample(tmp_path / "run")
    seen = load_splits(cfg.classify, data_dir, 7).test.reset_index(drop=True)
    pd.testing.assert_frame_equal(sample, seen)
    assert not sample.equals(load_splits(cfg.classify, data_dir, 42).test.reset_index(drop=True))
    confusion = inspection.confusion_matrix(tmp_path / "run")
    assert confusion.sum(axis=1).to_dict() == sample["label"].value_counts().to_dict()

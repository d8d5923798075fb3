"""The forward + backward ensemble (model.direction): reversal, a backward chain of stages, the ensemble's
averaging, and `ulmfit run --set model.direction=both` end to end on the smoke preset."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.artifacts.layout import chains
from pipeline.artifacts.model_file import load_model_file
from pipeline.artifacts.probabilities import PREDICTIONS_FILE, predictions_table, read_predictions, table_bytes
from pipeline.artifacts.stage_folder import is_complete, read_metrics, write_files
from pipeline.artifacts.store import stage_key
from pipeline.config import ClassifyConfig, load_config
from pipeline.errors import ArtifactError, ConfigError
from pipeline.models.direction import model_direction, orient
from pipeline.use.ensemble import ensemble_key, write_ensemble
from tests.test_flow import WORK_MARKERS
from tests.test_flow import ulmfit_here as ulmfit  # in this process; the real command: test_flow.first_run

BOS = 2
SUMMARY = re.compile(r"^  ([\w-]+)\s+(Completed|Cached)\s+[\d.]+s  (.*?): ([\d.]+)  -> ", re.M)


# --- reading direction: tiny shapes ----------------------------------------------------------------

def test_backward_reverses_the_document_and_keeps_bos_first():
    assert list(orient(np.array([BOS, 5, 6, 7]), BOS, "backward")) == [BOS, 7, 6, 5]
    assert list(orient([5, 6, 7], BOS, "backward")) == [7, 6, 5]  # no leading bos: all reversed
    assert list(orient([5, 6, 7], None, "backward")) == [7, 6, 5]  # an encoder without bos
    assert list(orient([BOS], BOS, "backward")) == [BOS] and len(orient([], BOS, "backward")) == 0
    assert list(orient([BOS, 5, 6], BOS, "forward")) == [BOS, 5, 6]


def test_reversal_round_trips():
    ids = np.array([BOS, 11, 12, 13, 14, BOS, 15])
    back = orient(ids, BOS, "backward")
    assert back.dtype == np.int64 and not np.array_equal(back, ids)
    assert np.array_equal(orient(back, BOS, "backward"), ids)


def test_a_stage_refuses_both():
    with pytest.raises(ConfigError, match="both"):
        orient([BOS, 5], BOS, "both")
    with pytest.raises(ConfigError, match="both"):
        model_direction({"model": {"direction": "both"}})
    assert model_direction({"model": {"backbone": "awd_lstm"}}) == "forward"  # files from before the setting


class _Encoder:
    """Each text's ids: bos then 10, 11, ... (as many as the text has characters)."""

    class specials:  # noqa: N801
        bos = BOS

    def encode(self, texts, name, cache=True):
        return [np.array([BOS] + list(range(10, 10 + len(t))), dtype=np.int64) for t in texts]


def test_classifier_truncates_then_reverses():
    """head_tail keeps the review's own head and tail; the backward classifier reads that cut reversed."""
    from pipeline.stages.classify import encode_texts

    cc = ClassifyConfig(max_tokens=8, truncation="head_tail")
    forward = encode_texts(["x" * 20], _Encoder(), cc, "t", "forward")[0]
    assert forward.tolist() == [BOS, 10] + list(range(24, 30))  # 2 head tokens (bos, t1), 6 tail tokens
    backward = encode_texts(["x" * 20], _Encoder(), cc, "t", "backward")[0]
    assert backward.tolist() == [BOS] + list(range(29, 23, -1)) + [10]


def test_both_splits_into_a_forward_and_a_backward_chain(data_dir):
    both, forward = load_config("smoke", ["model.direction=both"]), load_config("smoke")
    (f_suffix, f_cfg), (b_suffix, b_cfg) = chains(both)
    assert (f_suffix, b_suffix) == ("", "-backward")
    assert (f_cfg.model.direction, b_cfg.model.direction) == ("forward", "backward")
    assert chains(forward) == [("", forward)]
    # the forward chain is the forward-only run: same keys, shared through the stage store
    assert stage_key("pretrain", f_cfg, None) == stage_key("pretrain", forward, None)
    assert stage_key("pretrain", b_cfg, None) != stage_key("pretrain", forward, None)


# --- the ensemble's averaging on hand-made classifier folders --------------------------------------

def _classifier(folder: Path, rows, labels, probs, direction, test_source="imdb/test") -> Path:
    metrics = {"test_source": test_source, "direction": direction, "params": 10}
    table = predictions_table(rows, labels, ["neg", "pos"], np.array(probs))
    return write_files(folder, {"metrics.json": json.dumps(metrics).encode(), PREDICTIONS_FILE: table_bytes(table)})


def test_ensemble_averages_the_probabilities(tmp_path):
    labels = ["neg", "pos", "pos", "neg"]
    f = _classifier(tmp_path / "f", [7, 3, 9, 1], labels, [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]], "forward")
    b = _classifier(tmp_path / "b", [7, 3, 9, 1], labels, [[0.8, 0.2], [0.1, 0.9], [0.7, 0.3], [0.7, 0.3]], "backward")
    metrics = write_ensemble([f, b], tmp_path / "ensemble", ensemble_key([f, b]))
    assert metrics["forward_test_accuracy"] == 0.5 and metrics["backward_test_accuracy"] == 0.75
    assert metrics["test_accuracy"] == 1.0 and metrics["gain_over_best_single"] == 0.25  # each fixes the other
    assert metrics["confusion_matrix"] == [[2, 0], [0, 2]] and metrics["test_size"] == 4
    table, classes = read_predictions(tmp_path / "ensemble")
    assert classes == ["neg", "pos"] and table["row"].tolist() == [7, 3, 9, 1]
    assert table["prob_pos"].tolist() == [(0.1 + 0.2) / 2, (0.4 + 0.9) / 2, (0.8 + 0.3) / 2, (0.55 + 0.3) / 2]
    assert is_complete(tmp_path / "ensemble") and "| ensemble (mean probability) |" in (
        tmp_path / "ensemble" / "card.md").read_text()


def test_ensemble_refuses_classifiers_of_different_reviews(tmp_path):
    probs = [[0.9, 0.1], [0.2, 0.8]]
    f = _classifier(tmp_path / "f", [1, 2], ["neg", "pos"], probs, "forward")
    for name, rows, labels, source, what in [("rows", [1, 3], ["neg", "pos"], "imdb/test", "test reviews"),
                                             ("labels", [1, 2], ["pos", "pos"], "imdb/test", "true labels"),
                                             ("source", [1, 2], ["neg", "pos"], "other.csv", "test source")]:
        b = _classifier(tmp_path / name, rows, labels, probs, "backward", source)
        with pytest.raises(ArtifactError, match=what):
            write_ensemble([f, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "old").mkdir()
    with pytest.raises(ArtifactError, match=PREDICTIONS_FILE):
        write_ensemble([f, tmp_path / "old"], tmp_path / "out")


# --- a backward chain of stages on the smoke preset ------------------------------------------------

@pytest.fixture(scope="module")
def backward_run(tmp_path_factory, data_dir):
    """pretrain -> adapt -> classify reading backward (fp32: predict runs in fp32)."""
    from pipeline.stages import adapt, classify, pretrain
    from pipeline.stages.context import make_context

    root = tmp_path_factory.mktemp("backward")
    cfg = load_config("smoke", ["model.direction=backward", "precision=fp32"])
    p = pretrain.run(make_context("pretrain", cfg, root / "pretrain"))
    a = adapt.run(make_context("adapt", cfg, root / "adapt", p.path))
    classify.run(make_context("classify", cfg, root / "classify", a.path))
    return root


@pytest.mark.parametrize("stage", ["pretrain", "adapt", "classify"])
def test_backward_stages_record_their_direction(backward_run, stage):
    assert model_direction(load_model_file(backward_run / stage).config) == "backward"
    assert read_metrics(backward_run / stage)["direction"] == "backward"


def test_backward_lm_samples_end_with_the_prompt(backward_run):
    """A backward LM writes what comes before the prompt; the card shows it in reading order."""
    from pipeline.training.lm import SAMPLE_PROMPTS

    card = (backward_run / "adapt" / "card.md").read_text()
    samples = dict(re.findall(r"^- \*(.+?)\* → (.*)$", card, re.M))
    # (lowercased: a sampled xxup / xxmaj just before the prompt may change its first word's case)
    assert samples and all(sample.lower().endswith(prompt.split(" (")[0].lower()) for prompt, sample in samples.items())
    assert all(len(sample) > len(prompt) for prompt, sample in samples.items())
    assert {p.split(" (")[0] for p in samples} == set(SAMPLE_PROMPTS)
    assert read_metrics(backward_run / "adapt")["held_out_perplexity_after"] < read_metrics(
        backward_run / "adapt")["held_out_perplexity_before"]


def test_backward_classifier_writes_its_test_predictions(backward_run):
    folder = backward_run / "classify"
    table, classes = read_predictions(folder)
    metrics, mf = read_metrics(folder), load_model_file(folder)
    assert classes == metrics["classes"] and table["row"].tolist() == mf.samples["test"]
    probs = table[[f"prob_{c}" for c in classes]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-6)
    truth = table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    assert (probs.argmax(axis=1) == truth).mean() == pytest.approx(metrics["test_accuracy"], abs=1e-6)  # float32


def test_predict_on_a_backward_run_matches_its_test_predictions(backward_run):
    """predict reads the direction from the model file and encodes as the stage did (truncated, reversed)."""
    from pipeline.use import inspection
    from pipeline.use.predict import predict

    reviews = inspection.test_sample(backward_run).head(6)
    table, classes = read_predictions(backward_run / "classify")
    for (label, prob), (_, row) in zip(predict(backward_run, reviews["text"].tolist()), table.head(6).iterrows()):
        assert label == classes[int(np.argmax([row[f"prob_{c}"] for c in classes]))]
        assert prob == pytest.approx(row[f"prob_{label}"], abs=1e-5)


def test_a_stage_refuses_an_upstream_of_the_other_direction(backward_run, tmp_path):
    from pipeline.stages import adapt
    from pipeline.stages.context import make_context

    with pytest.raises(ArtifactError, match="reads backward"):
        adapt.run(make_context("adapt", load_config("smoke"), tmp_path / "adapt", backward_run / "pretrain"))
    assert not (tmp_path / "adapt").exists()


def test_a_stage_handed_both_fails_before_any_work(tmp_path):
    from pipeline.stages import pretrain
    from pipeline.stages.context import make_context

    with pytest.raises(ConfigError, match="both"):
        pretrain.run(make_context("pretrain", load_config("smoke", ["model.direction=both"]), tmp_path / "p"))
    assert not (tmp_path / "p").exists()


# --- end to end: ulmfit run --set model.direction=both ----------------------------------------------

CHAINS = ["pretrain", "adapt", "classify", "pretrain-backward", "adapt-backward", "classify-backward", "ensemble"]


@pytest.fixture(scope="module")
def both_run(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("both") / "run"
    proc = ulmfit("run", "--preset", "smoke", "--out", str(run_dir), "--set", "model.direction=both")
    assert proc.returncode == 0, proc.output[-3000:]
    return run_dir, proc


def test_both_runs_each_chain_and_their_ensemble(both_run):
    run_dir, proc = both_run
    lines = SUMMARY.findall(proc.stdout)
    assert [(name, state) for name, state, *_ in lines] == [(name, "Completed") for name in CHAINS]
    assert lines[-1][2] == "test accuracy" and float(lines[-1][3]) == pytest.approx(
        read_metrics(run_dir / "ensemble")["test_accuracy"], abs=1e-4)
    for suffix, direction in (("", "forward"), ("-backward", "backward")):
        for stage in ("pretrain", "adapt", "classify"):
            assert model_direction(load_model_file(run_dir / f"{stage}{suffix}").config) == direction


def test_the_ensemble_averages_the_two_prediction_files(both_run):
    run_dir, _ = both_run
    (fwd, classes), (bwd, _) = read_predictions(run_dir / "classify"), read_predictions(run_dir / "classify-backward")
    cols = [f"prob_{c}" for c in classes]
    assert fwd["row"].equals(bwd["row"]) and fwd["label"].equals(bwd["label"])
    mean = (fwd[cols].to_numpy() + bwd[cols].to_numpy()) / 2
    truth = fwd["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    metrics = read_metrics(run_dir / "ensemble")
    assert metrics["test_accuracy"] == float((mean.argmax(axis=1) == truth).mean())
    for direction, folder in (("forward", "classify"), ("backward", "classify-backward")):  # the stage's is float32
        assert metrics[f"{direction}_test_accuracy"] == pytest.approx(read_metrics(run_dir / folder)["test_accuracy"],
                                                                      abs=1e-6)
    assert metrics["test_size"] == len(fwd) == 60
    ensemble, _ = read_predictions(run_dir / "ensemble")
    assert np.array_equal(ensemble[cols].to_numpy(), mean) and ensemble["row"].equals(fwd["row"])


def test_both_rerun_is_fully_cached(both_run):
    run_dir, _ = both_run
    proc = ulmfit("run", "--preset", "smoke", "--out", str(run_dir), "--set", "model.direction=both")
    assert proc.returncode == 0, proc.output[-3000:]
    assert [(name, state) for name, state, *_ in SUMMARY.findall(proc.stdout)] == [(n, "Cached") for n in CHAINS]
    assert not any(marker in proc.output for marker in WORK_MARKERS), "cached run trained or tokenized"


def test_ensemble_command_on_two_runs(both_run, tmp_path):
    """`ulmfit ensemble` on the two classifiers gives the run's ensemble (from the stage store: same key)."""
    run_dir, _ = both_run
    out = tmp_path / "ens"
    proc = ulmfit("ensemble", str(run_dir / "classify"), str(run_dir / "classify-backward"), "--out", str(out))
    assert proc.returncode == 0, proc.output[-3000:]
    assert SUMMARY.findall(proc.stdout)[0][:2] == ("ensemble", "Cached")
    assert read_metrics(out) == read_metrics(run_dir / "ensemble")
    bad = ulmfit("ensemble", str(run_dir / "classify"), str(tmp_path / "missing"))
    assert bad.returncode == 2 and [line for line in bad.stderr.splitlines() if line.startswith("ulmfit: error:")]


def test_compare_refuses_both(tmp_path):
    from flows.compare_flow import compare_flow

    with pytest.raises(ConfigError, match="one direction per cell"):
        compare_flow.fn(preset="smoke", backbones=["awd_lstm"], variants=["full"], overrides=["model.direction=both"],
                        out_dir=str(tmp_path / "c"))

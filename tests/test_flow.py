"""End to end through the real `ulmfit` command: the smoke flow, caching, reruns, errors, predict."""
import contextlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.artifacts.stage_folder import is_complete, read_manifest, read_metrics

STAGE_LINE = re.compile(r"^\s+(pretrain|adapt|classify)\s+(\w+)\s", re.M)
WORK_MARKERS = ("tokenizing ", " epoch 1/")  # what training or tokenizing prints


def ulmfit(*args, timeout=600):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True,
                          timeout=timeout)
    proc.wall = time.perf_counter() - start
    proc.output = proc.stdout + proc.stderr
    proc.states = dict(STAGE_LINE.findall(proc.stdout))
    return proc


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def ulmfit_here(*args):
    """`ulmfit(*args)` in this process (no interpreter start-up, ~3 s of imports each): what it prints, and the
    log lines of the stages and of Prefect. The real command in a fresh process is `first_run`'s (and
    test_new_user's and test_packaging's)."""
    from flows.cli import main

    lines, loggers = _Lines(), [logging.getLogger("ulmfit"), logging.getLogger("prefect")]
    out, err = io.StringIO(), io.StringIO()
    for logger in loggers:
        logger.addHandler(lines)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        for logger in loggers:
            logger.removeHandler(lines)
    proc = SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
    proc.output = proc.stdout + proc.stderr + "\n".join(lines.lines)
    proc.states = dict(STAGE_LINE.findall(proc.stdout))
    return proc


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("flow") / "run"
    proc = ulmfit("run", "--preset", "smoke", "--out", str(run_dir))
    assert proc.returncode == 0, proc.output[-3000:]
    return run_dir, proc


def test_smoke_flow_runs_all_stages(first_run):
    run_dir, proc = first_run
    assert proc.states == {"pretrain": "Completed", "adapt": "Completed", "classify": "Completed"}
    pre, ada, cla = (read_metrics(run_dir / s) for s in ("pretrain", "adapt", "classify"))
    assert 1 < pre["valid_perplexity"] < pre["vocab_size"]
    assert ada["held_out_perplexity_after"] < ada["held_out_perplexity_before"]
    assert 0 <= cla["test_accuracy"] <= 1 and cla["test_size"] == 60
    assert any(" epoch 1/" in line for line in proc.output.splitlines())  # epoch-level progress lines


def test_second_run_is_fully_cached(first_run):
    run_dir, _ = first_run
    proc = ulmfit_here("run", "--preset", "smoke", "--out", str(run_dir))
    assert proc.returncode == 0, proc.output[-3000:]
    assert proc.states == {"pretrain": "Cached", "adapt": "Cached", "classify": "Cached"}
    # No wall-clock assertion (machines here are noisy): the cached-rerun time is a benchmark (BENCHMARKS.md).
    assert not any(marker in proc.output for marker in WORK_MARKERS), "cached run trained or tokenized"


def test_the_check_loads_the_data_of_the_stages_that_will_compute_only(first_run, monkeypatch, tmp_path):
    """A fully cached rerun loads no corpus and builds no model before it starts (it only asks whether the
    device exists); a rerun loads only what it will read."""
    from pipeline import validate
    from pipeline.config import load_config
    from pipeline.stages.registry import Stage

    run_dir, _ = first_run
    loaded = []
    monkeypatch.setattr(Stage, "load_data", lambda self, cfg: loaded.append(self.name))
    monkeypatch.setattr(validate, "check_settings", lambda cfg: loaded.append("settings"))
    cfg = load_config("smoke")
    validate.check_run(cfg, run_dir)
    assert loaded == []
    validate.check_run(cfg, run_dir, rerun="adapt")
    assert loaded == ["settings", "adapt", "classify"]
    loaded.clear()
    validate.check_run(load_config("smoke", ["classify.lrs=[0.05,0.01]"]), run_dir)
    assert loaded == ["settings", "classify"]
    loaded.clear()
    validate.check_run(cfg, tmp_path / "fresh")  # the stage store has them all: nothing will compute
    assert loaded == []
    validate.check_run(load_config("smoke", ["pretrain.lr=0.02"]), tmp_path / "fresh")
    assert loaded == ["settings", "pretrain", "adapt", "classify"]


def test_changed_classify_setting_reruns_only_classify(first_run):
    run_dir, _ = first_run
    proc = ulmfit_here("run", "--preset", "smoke", "--out", str(run_dir), "--set", "classify.lrs=[0.03,0.01]")
    assert proc.returncode == 0, proc.output[-3000:]
    assert proc.states == {"pretrain": "Cached", "adapt": "Cached", "classify": "Completed"}
    assert "tokenizing wikitext" not in proc.output
    assert " epoch 1/" in proc.output  # the in-process capture sees the stages' log lines


def test_rerun_forces_stage_and_downstream(first_run):
    run_dir, _ = first_run
    proc = ulmfit_here("run", "--preset", "smoke", "--out", str(run_dir), "--rerun", "adapt")
    assert proc.returncode == 0, proc.output[-3000:]
    assert proc.states == {"pretrain": "Cached", "adapt": "Completed", "classify": "Completed"}


def test_deleted_artifact_is_replaced_not_trusted(first_run):
    """An incomplete stage folder is never used: it is replaced by the stage store's copy for its key,
    or recomputed when the store has none."""
    run_dir, _ = first_run
    before = read_manifest(run_dir / "classify")
    (run_dir / "classify" / "model.pt").unlink()
    proc = ulmfit_here("run", "--preset", "smoke", "--out", str(run_dir))
    assert proc.returncode == 0, proc.output[-3000:]
    assert proc.states["classify"] == "Cached" and read_manifest(run_dir / "classify") == before
    assert is_complete(run_dir / "classify", before["cache_key"])
    shutil.rmtree(Path(os.environ["ULMFIT_CACHE_DIR"]) / "stages" / before["cache_key"])
    (run_dir / "classify" / "model.pt").unlink()
    proc = ulmfit_here("run", "--preset", "smoke", "--out", str(run_dir))
    assert proc.returncode == 0, proc.output[-3000:]
    assert proc.states["classify"] == "Completed" and is_complete(run_dir / "classify", before["cache_key"])


def test_corrupted_artifact_is_recomputed_not_loaded(first_run):
    run_dir, _ = first_run
    model = run_dir / "pretrain" / "model.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the weights
    model.write_bytes(bytes(data))  # in place: the store's hard link to this file is damaged too
    proc = ulmfit_here("run", "--preset", "smoke", "--out", str(run_dir))
    assert proc.returncode == 0, proc.output[-3000:]
    assert proc.states["pretrain"] == "Completed"
    assert is_complete(run_dir / "pretrain")


def test_bad_input_fails_cleanly_and_writes_nothing(first_run, tmp_path):
    run_dir, _ = first_run
    before = read_manifest(run_dir / "classify")
    missing = tmp_path / "no_such_reviews.csv"
    proc = ulmfit_here("run", "--preset", "smoke", "--out", str(run_dir), "--set", f"classify.corpus={missing}")
    assert proc.returncode == 2
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("ulmfit: error:")]
    assert len(error_lines) == 1 and "no_such_reviews.csv" in error_lines[0]
    assert read_manifest(run_dir / "classify") == before


# Bad settings rejected before anything runs: tests/test_bad_inputs.py (`ulmfit run`, one line each) and
# tests/test_config.py; `ulmfit predict` on a missing run: test_bad_inputs.test_predict_with_a_bad_run_directory;
# `ulmfit stages`: tests/test_registries.py.


def test_predict_command(first_run):
    run_dir, _ = first_run
    proc = ulmfit_here("predict", "--run", str(run_dir), "What a great film!", "Awful.", "What a great film!")
    assert proc.returncode == 0, proc.output[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["What a great film!", "Awful.", "What a great film!"]
    assert all(r["label"] in read_metrics(run_dir / "classify")["classes"] for r in rows)
    assert rows[0] == rows[2]  # the same text, the same answer: no state carried from one text to the next


# gpt with the spaCy tokenizer goes through the flow and its cache in tests/test_compare.py
# (test_adding_a_backbone_computes_only_its_cells), and `ulmfit predict` on it in tests/test_export.py.
@pytest.mark.slow
@pytest.mark.parametrize("backbone, tokenizer", [("bert", "wordpiece"), ("gpt", "bpe")])
def test_transformer_backbones_through_the_smoke_flow(backbone, tokenizer, tmp_path, data_dir):
    """The same three stages, caching and artifacts with the backbone (and tokenizer) as one setting."""
    run_dir = tmp_path / "run"
    sets = ["--set", f"model.backbone={backbone}", "--set", f"tokenizer.kind={tokenizer}"]
    proc = ulmfit_here("run", "--preset", "smoke", "--out", str(run_dir), *sets)
    assert proc.returncode == 0, proc.output[-3000:]
    assert proc.states == {"pretrain": "Completed", "adapt": "Completed", "classify": "Completed"}
    pre, ada, cla = (read_metrics(run_dir / s) for s in ("pretrain", "adapt", "classify"))
    assert pre["backbone"] == ada["backbone"] == cla["backbone"] == backbone and pre["tokenizer"] == tokenizer
    assert 1 < pre["valid_perplexity"] < 5 * pre["vocab_size"]
    assert ada["held_out_perplexity_after"] < ada["held_out_perplexity_before"]
    assert 0 <= cla["test_accuracy"] <= 1 and cla["test_size"] == 60
    from pipeline.config import load_config

    cfg = load_config("smoke", [f"model.backbone={backbone}"])  # every stage at the backbone's scale of the rates
    mult = cfg.model.lr_mult()
    assert (pre["lr"], ada["lr"]) == pytest.approx((cfg.pretrain.lr * mult, cfg.adapt.lr * mult))
    assert cla["top_lrs"] == pytest.approx([lr * mult for lr in cfg.classify.lrs])
    if tokenizer != "spacy":  # a subword vocabulary is trained once and reused by stages 2-3
        assert pre["vocab_size"] == ada["vocab_size"] == ada["vocab_known_from_pretrain"]
    # `ulmfit predict` on each backbone's classifier: tests/test_export.py (against its ONNX scores)
    again = ulmfit_here("run", "--preset", "smoke", "--out", str(run_dir), *sets)
    assert again.states == {"pretrain": "Cached", "adapt": "Cached", "classify": "Cached"}, again.output[-3000:]
    assert not any(marker in again.output for marker in WORK_MARKERS), "cached run trained or tokenized"


# A stage that fails with a user error (here: the disk fills up while classify writes its first checkpoint).
FAILING_RUN = """
import errno, sys
from pipeline.artifacts import stage_folder

def full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

stage_folder.torch.save = full
from flows.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_error_inside_a_stage_is_one_line_without_prefect_traceback(first_run, verbose):
    """Prefect logged ~100 lines of traceback before the `ulmfit: error:` line; they show with -v only."""
    run_dir, _ = first_run
    args = ["run", "--preset", "smoke", "--out", str(run_dir), "--set", "classify.lrs=[0.02,0.02]",
            "--set", "classify.baselines=false"]  # no baselines before the first checkpoint fails
    proc = subprocess.run([sys.executable, "-c", FAILING_RUN, *args, *(["-v"] if verbose else [])],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ulmfit: error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0]
    assert ("Traceback" in proc.stderr) == verbose, proc.stderr[-3000:]
    if not verbose:
        assert not any("Finished in state Failed" in line for line in proc.stderr.splitlines())

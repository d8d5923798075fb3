"""Resume after kill -9: a real `ulmfit run` killed mid-training continues from its last epoch
checkpoint when rerun, and ends with the metrics of an uninterrupted run.

Tolerance: perplexities within 1e-3 relative, test accuracy within 0.02. On CPU the resumed run
is bit-identical (every RNG and the LM document order are restored); the tolerance leaves room
for non-deterministic GPU kernels.
"""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pipeline.artifacts.stage_folder import partial_dir, read_metrics
from pipeline.training.checkpoint import Checkpointer

EPOCHS = 3
ARGS = ["run", "--preset", "smoke", "--set", f"pretrain.epochs={EPOCHS}", "--set", "pretrain.max_docs=12"]


def start(run_dir, prefect_home, cache_dir=None, **popen):
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if cache_dir is not None:
        env["ULMFIT_CACHE_DIR"] = str(cache_dir)
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *ARGS, "--out", str(run_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.slow
def test_kill_9_mid_training_then_resume(tmp_path, data_dir):
    # Side by side, in another run dir and with its own stage store: on a shared store the victim would wait
    # for the reference's stages (one computation per key) and never train.
    reference = start(tmp_path / "reference", tmp_path / "prefect-ref", tmp_path / "cache-ref")
    run_dir = tmp_path / "killed"
    victim = start(run_dir, tmp_path / "prefect", start_new_session=True)
    checkpoint = partial_dir(run_dir / "pretrain") / "pretrain.pt"
    deadline = time.monotonic() + 600
    while not checkpoint.exists():
        assert victim.poll() is None, victim.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.1)
    os.killpg(victim.pid, signal.SIGKILL)  # the run and its Prefect server, as kill -9 would
    victim.wait()
    assert victim.returncode == -signal.SIGKILL

    done = torch.load(checkpoint, weights_only=True)["epochs_done"]
    assert 1 <= done < EPOCHS, done
    assert not (run_dir / "pretrain").exists()  # no stage folder that looks complete

    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    rerun = subprocess.run([sys.executable, "-m", "flows.cli", *ARGS, "--out", str(run_dir)], env=env,
                           capture_output=True, text=True, timeout=900)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-3000:]
    assert f"pretrain: resuming from checkpoint, {done}/{EPOCHS} epoch(s) already done" in output
    assert f"pretrain epoch {done}/{EPOCHS}:" not in output  # the finished epochs were not retrained
    assert f"pretrain epoch {EPOCHS}/{EPOCHS}:" in output
    assert not any(p.name.endswith(".partial") for p in run_dir.iterdir())  # removed once complete

    ref_out = reference.communicate(timeout=900)[0]
    assert reference.returncode == 0, ref_out[-3000:]
    ref, got = ({s: read_metrics(d / s) for s in ("pretrain", "adapt", "classify")}
                for d in (tmp_path / "reference", run_dir))
    assert got["pretrain"]["valid_perplexity"] == pytest.approx(ref["pretrain"]["valid_perplexity"], rel=1e-3)
    assert got["adapt"]["held_out_perplexity_after"] == pytest.approx(ref["adapt"]["held_out_perplexity_after"], rel=1e-3)
    assert got["classify"]["test_accuracy"] == pytest.approx(ref["classify"]["test_accuracy"], abs=0.02)
    history = (run_dir / "pretrain" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + EPOCHS  # the epoch log spans the kill


def test_checkpoint_for_other_inputs_is_discarded(tmp_path):
    folder = tmp_path / "pretrain.partial"
    folder.mkdir()
    (folder / "key.txt").write_text("old-key")
    (folder / "pretrain.pt").write_bytes(b"stale")
    Checkpointer(folder, "new-key")
    assert not folder.exists()


def test_unreadable_checkpoint_starts_the_phase_over(tmp_path):
    ckpt = Checkpointer(tmp_path / "x.partial", "k")
    ckpt.folder.mkdir()
    (ckpt.folder / "key.txt").write_text("k")
    ckpt.path("pretrain").write_bytes(b"\x80\x02 truncated")
    assert ckpt.load("pretrain", 3) is None

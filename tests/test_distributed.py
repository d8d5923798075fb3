"""Data-parallel stages for real: 2 processes, gloo, the smoke preset, through the `ulmfit` command.

The distributed run must give the same artifact layout and model shapes as a single-process run,
sane global metrics, and cache keys that do not depend on nproc.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pipeline.artifacts.model_file import load_model_file
from pipeline.artifacts.probabilities import PREDICTIONS_FILE
from pipeline.artifacts.stage_folder import read_manifest, read_metrics
from pipeline.config import load_config
from pipeline.stages.registry import stage_names
from pipeline.training import ranks
from tests.test_flow import STAGE_LINE

STAGES = stage_names()
# The 2-process flow's stage 1 trains 3 epochs (the smoke preset's 1 leaves no epoch to kill it in): it is also
# the uninterrupted reference of test_two_process_stage_resumes_after_kill_9, and the two-node run's twin.
DDP_SETS = ["nproc=2", "pretrain.epochs=3"]

FILES = ["card.md", "history.csv", "history.png", "manifest.json", "metrics.json", "model.pt"]
STAGE_FILES = {stage: sorted(FILES + ([PREDICTIONS_FILE] if stage == "classify" else [])) for stage in STAGES}


# --- sharding: every rank gets the same amount of work (or DDP blocks) ----------------------------

def test_stream_shards_are_equal_and_disjoint():
    docs = [torch.arange(a, b) for a, b in [(0, 7), (7, 8), (8, 30), (30, 31)]]
    shards = [ranks.shard_stream(docs, r, 3) for r in range(3)]
    flat = [torch.cat(s) for s in shards]
    assert [len(f) for f in flat] == [10, 10, 10]
    assert torch.equal(torch.cat(flat), torch.arange(30))  # contiguous slices, last token dropped
    assert [len(d) for d in shards[0]] == [7, 1, 2]  # cut at the original document boundaries


def test_item_shards_have_equal_counts():
    items = list(range(11))
    shards = [ranks.shard_items(items, r, 2) for r in range(2)]
    assert shards == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    assert ranks.shard_items(items) == items  # one process: unchanged


def test_batch_must_split_over_processes():
    from pipeline.errors import ConfigError

    assert ranks.per_rank_batch(16, 2) == 8
    with pytest.raises(ConfigError, match="not divisible by nproc=3"):
        load_config("smoke", ["nproc=3"])


def test_cache_key_ignores_world_size(data_dir):
    from pipeline.artifacts.store import stage_key

    one, two = load_config("smoke"), load_config("smoke", ["nproc=2"])
    assert stage_key("pretrain", one, None) == stage_key("pretrain", two, None)


# --- the real thing: 2 gloo processes per stage via the CLI ---------------------------------------

def _single_run(root, backbone, stages=STAGES):
    """The reference: the same stages in this process (no Prefect), nproc=1."""
    from pipeline.stages.context import make_context
    from pipeline.stages.registry import run_stage

    cfg, upstream = load_config("smoke", [f"model.backbone={backbone}"]), None
    for stage in stages:
        upstream = run_stage(make_context(stage, cfg, root / stage, upstream)).path
    return root


def _ddp_run(root, backbone):
    cmd = [sys.executable, "-m", "flows.cli", "run", "--preset", "smoke", "--out", str(root),
           *(arg for s in [*DDP_SETS, f"model.backbone={backbone}"] for arg in ("--set", s))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return root, dict(STAGE_LINE.findall(proc.stdout)), output


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smoke_run):
    """The 2-process run, and the session's single-process smoke run (awd_lstm, nproc=1) as its reference."""
    root = tmp_path_factory.mktemp("ddp-awd_lstm")
    ddp_dir, states, output = _ddp_run(root / "ddp", "awd_lstm")
    return smoke_run, ddp_dir, states, output


@pytest.mark.slow
def test_two_process_flow_completes(runs):
    _, _, states, output = runs
    assert states == {s: "Completed" for s in STAGES}
    for rank in (0, 1):  # both ranks joined the gloo group in every stage
        assert output.count(f"distributed: rank {rank} of 2 (gloo)") == 3


@pytest.mark.slow
def test_same_layout_and_shapes_as_single_process(runs):
    single, ddp, _, _ = runs
    for stage in STAGES:
        assert sorted(p.name for p in (ddp / stage).iterdir()) == STAGE_FILES[stage]
        assert sorted(p.name for p in (single / stage).iterdir()) == STAGE_FILES[stage]
        ours, ref = load_model_file(ddp / stage).state_dict, load_model_file(single / stage).state_dict
        assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}
        assert all(torch.isfinite(v.float()).all() for v in ours.values())


@pytest.mark.slow
def test_global_metrics_are_sane(runs):
    _, ddp, _, _ = runs
    pre, ada, cla = (read_metrics(ddp / s) for s in STAGES)
    assert 1 < pre["valid_perplexity"] < pre["vocab_size"]
    assert ada["held_out_perplexity_after"] < ada["held_out_perplexity_before"]
    assert 0 <= cla["test_accuracy"] <= 1 and cla["test_size"] == 60  # the whole test set, not a shard
    assert pre["train_tokens"] == read_metrics(runs[0] / "pretrain")["train_tokens"]  # global token count
    assert pre["epochs"] == 3


@pytest.mark.slow
def test_manifest_key_is_the_single_process_key(runs):
    from pipeline.artifacts.store import stage_key

    _, ddp, _, _ = runs
    cfg = load_config("smoke", [f"model.backbone={load_model_file(ddp / 'pretrain').backbone}", *DDP_SETS])
    assert read_manifest(ddp / "pretrain")["cache_key"] == stage_key("pretrain", cfg, None)
    assert json.loads((ddp / "pretrain" / "manifest.json").read_text())["files"].keys() == set(FILES) - {"manifest.json"}


def test_transformer_pretrain_two_processes(tmp_path, data_dir):
    """The gpt backbone under torchrun directly (pipeline.stages.run_one), stage 1 only to keep CI short."""
    from flows.launching import torchrun_command

    cfg = load_config("smoke", ["model.backbone=gpt", "nproc=2"])
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(cfg.model_dump_json())
    cmd = torchrun_command("pretrain", 2, cfg_path, None, str(tmp_path / "ddp" / "pretrain"), "key")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    single = _single_run(tmp_path / "single", "gpt", ["pretrain"])
    ours, ref = (load_model_file(d / "pretrain").state_dict for d in (tmp_path / "ddp", single))
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    assert sorted(p.name for p in (tmp_path / "ddp" / "pretrain").iterdir()) == FILES
    metrics = read_metrics(tmp_path / "ddp" / "pretrain")
    assert 1 < metrics["valid_perplexity"] < metrics["vocab_size"] and metrics["backbone"] == "gpt"


@pytest.mark.slow
def test_two_process_stage_resumes_after_kill_9(runs, tmp_path, data_dir):
    """torchrun with 2 gloo ranks, as the flow launches it: rank 0 checkpoints every epoch (the others
    hand it their RNG and data-loader states); after kill -9 the same command resumes on both ranks
    and ends where the uninterrupted 2-process flow's stage 1 (the `runs` fixture, same settings) ends
    (same tolerance as tests/test_resume.py)."""
    from flows.launching import torchrun_command
    from pipeline.artifacts.stage_folder import partial_dir

    epochs = 3
    cfg = load_config("smoke", DDP_SETS)
    assert cfg.pretrain.epochs == epochs
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())

    def command(root):
        return torchrun_command("pretrain", 2, tmp_path / "cfg.json", None, str(root / "pretrain"), "key")

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(tmp_path / "victim.log", "w") as victim_log:
        victim = subprocess.Popen(command(tmp_path / "run"), stdout=victim_log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
        checkpoint = partial_dir(tmp_path / "run" / "pretrain") / "pretrain.pt"
        deadline = time.monotonic() + 600
        while not checkpoint.exists():
            assert victim.poll() is None, (tmp_path / "victim.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        os.killpg(victim.pid, signal.SIGKILL)  # torchrun; the ranks (sessions of their own) die with it
        victim.wait()
    deadline = time.monotonic() + 30
    while _ranks_of(tmp_path / "run") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _ranks_of(tmp_path / "run"), "a rank outlived torchrun"
    saved = torch.load(checkpoint, weights_only=True)
    done = saved["epochs_done"]
    assert 1 <= done < epochs and len(saved["ranks"]) == 2, done
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["key.txt", "pretrain.pt"]  # one writer
    assert not (tmp_path / "run" / "pretrain").exists()

    rerun = subprocess.run(command(tmp_path / "run"), capture_output=True, text=True, timeout=600, env=env)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-4000:]
    for rank in (0, 1):
        assert f"[rank {rank}] pretrain: resuming from checkpoint, {done}/{epochs} epoch(s) already done" in output
    assert f"pretrain epoch {done}/{epochs}:" not in output  # the finished epochs were not retrained
    assert not checkpoint.parent.exists()  # removed once the stage folder is written
    ref, got = read_metrics(runs[1] / "pretrain"), read_metrics(tmp_path / "run" / "pretrain")
    assert got["valid_perplexity"] == pytest.approx(ref["valid_perplexity"], rel=1e-3)
    assert len((tmp_path / "run" / "pretrain" / "history.csv").read_text().splitlines()) == 1 + epochs


def _ranks_of(run_dir) -> list:
    import psutil

    return [p for p in psutil.process_iter(["cmdline"])
            if "pipeline.stages.run_one" in (p.info["cmdline"] or []) and str(run_dir) in " ".join(p.info["cmdline"])]


def test_rank_error_becomes_one_line_user_error():
    """A rank's `ulmfit: error:` line surfaces as UlmfitError (the CLI prints it and exits 2)."""
    from flows.launching import _torchrun
    from pipeline.errors import UlmfitError

    script = "import sys; print('ulmfit: error: bad corpus', file=sys.stderr); sys.exit(2)"
    with pytest.raises(UlmfitError, match="^bad corpus$"):
        _torchrun([sys.executable, "-c", script])
    with pytest.raises(RuntimeError, match="status 3"):
        _torchrun([sys.executable, "-c", "raise SystemExit(3)"])


def test_two_nodes_match_the_two_process_run(runs, tmp_path):
    """Issue 24: several nodes, not only several processes. Two torchrun "nodes" on loopback (`--nnodes 2`,
    c10d rendezvous on 127.0.0.1, one process each, as docs/gpu.md tells a cluster user to start them)
    train stage 1 as the flow's 2-process single-node run does: same files, same cache key, same weights."""
    from flows.servers import free_port
    from pipeline.artifacts.store import stage_key

    _, ddp, _, _ = runs
    cfg = load_config("smoke", DDP_SETS)
    cfg_path, out = tmp_path / "cfg.json", tmp_path / "nodes" / "pretrain"
    cfg_path.write_text(cfg.model_dump_json())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
           f"--rdzv_endpoint=127.0.0.1:{free_port()}", "--rdzv_id=two-nodes", "-m", "pipeline.stages.run_one", "pretrain",
           "--config", str(cfg_path), "--out", str(out), "--cache-key", stage_key("pretrain", cfg, None)]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert sum(f"distributed: rank {r} of 2 (gloo)" in o for o in outputs for r in (0, 1)) == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (ddp / "pretrain").iterdir())
    assert read_manifest(out)["cache_key"] == read_manifest(ddp / "pretrain")["cache_key"]
    ours, single_node = load_model_file(out).state_dict, load_model_file(ddp / "pretrain").state_dict
    assert ours.keys() == single_node.keys()
    assert all(torch.allclose(ours[k].float(), single_node[k].float(), rtol=1e-4, atol=1e-6) for k in ours)

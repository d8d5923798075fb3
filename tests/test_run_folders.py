"""Every run folder stands alone (issue 11): a cache hit is this folder's own copy of a stage whose
content matches the key, never another folder's files read in place; deleting or moving other
folders never breaks a run; and a new folder with matching settings gets every stage from the cache.

The reproduction, on the smoke preset: X, Y, Y with pretrain.lr=0.05, X; then rm -rf Y; mv X X2;
X2, X (a new folder) and X again train nothing.
"""
import re
import shutil

import pytest

from pipeline.artifacts.stage_folder import read_manifest, read_metrics
from tests.test_flow import WORK_MARKERS
from tests.test_flow import ulmfit_here as ulmfit  # in this process; the real command: test_flow.first_run

STAGES = ("pretrain", "adapt", "classify")
BASE = ("run", "--preset", "smoke", "--set", "seed=13")
SUMMARY = re.compile(r"^\s+(pretrain|adapt|classify)\s+\w+\s+[\d.]+s\s+.*: ([-\d.]+)\s+-> (\S+)$", re.M)


def run(folder, *extra):
    proc = ulmfit(*BASE, *extra, "--out", str(folder))
    assert proc.returncode == 0, proc.output[-3000:]
    return proc


def manifests(folder) -> dict:
    return {s: read_manifest(folder / s) for s in STAGES}


def assert_reads_only(proc, folder):
    """The summary names this folder's stages and prints this folder's headline metrics."""
    lines = SUMMARY.findall(proc.stdout)
    assert [stage for stage, _, _ in lines] == list(STAGES), proc.stdout[-2000:]
    headline = {"pretrain": "valid_perplexity", "adapt": "held_out_perplexity_after", "classify": "test_accuracy"}
    for stage, value, path in lines:
        assert path == str((folder / stage).resolve()), proc.stdout[-2000:]
        assert float(value) == pytest.approx(read_metrics(folder / stage)[headline[stage]], abs=1e-4)


def assert_trained_nothing(proc):
    assert proc.states == dict.fromkeys(STAGES, "Cached"), proc.output[-3000:]
    assert not any(marker in proc.output for marker in WORK_MARKERS), "a cached run trained or tokenized"


@pytest.fixture(scope="module")
def root(tmp_path_factory, data_dir):
    return tmp_path_factory.mktemp("folders")


@pytest.fixture(scope="module")
def first_x(root):
    proc = run(root / "X")
    assert proc.states == dict.fromkeys(STAGES, "Completed")
    return manifests(root / "X")


def test_a_new_folder_gets_every_matching_stage_from_the_cache(root, first_x):
    proc = run(root / "Y")
    assert_trained_nothing(proc)
    assert manifests(root / "Y") == first_x  # the same stages, as this folder's own files
    assert_reads_only(proc, root / "Y")


@pytest.mark.slow
def test_another_folders_new_settings_never_leak_into_this_folder(root, first_x):
    changed = run(root / "Y", "--set", "pretrain.lr=0.05")
    assert changed.states == dict.fromkeys(STAGES, "Completed")
    again = run(root / "X")
    assert_trained_nothing(again)
    assert manifests(root / "X") == first_x  # adapt and classify were not rebuilt from Y's lr=0.05 model
    assert_reads_only(again, root / "X")


@pytest.mark.slow
def test_deleting_or_moving_other_folders_never_breaks_a_run(root, first_x):
    shutil.rmtree(root / "Y")
    (root / "X").rename(root / "X2")
    moved = run(root / "X2")
    assert_trained_nothing(moved)
    assert manifests(root / "X2") == first_x
    fresh = run(root / "X")  # a new folder where X was: every stage from the cache, nothing retrained
    assert_trained_nothing(fresh)
    assert manifests(root / "X") == first_x
    assert_reads_only(fresh, root / "X")
    assert_trained_nothing(run(root / "X"))

"""Stage artifacts: corrupted or truncated files are caught by their sha256; failed writes leave nothing."""
import errno

import pandas as pd
import pytest
import torch

from pipeline import artifacts
from pipeline.artifacts import is_complete, load_model_file, read_manifest, verify_folder, write_stage
from pipeline.errors import ArtifactError


def _stage(folder, key="k1"):
    model = {"kind": "lm", "state_dict": {"w": torch.arange(1000, dtype=torch.float32)}, "vocab": ["a"]}
    return write_stage(folder, model=model, metrics={"x": 1.0}, history=pd.DataFrame({"epoch": [0]}),
                       card="# card\n", cache_key=key)


def _flip_byte(path, where=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_intact_stage_loads_and_is_complete(tmp_path):
    folder = _stage(tmp_path / "pretrain")
    assert is_complete(folder, "k1") and not is_complete(folder, "other-key")
    assert load_model_file(folder, expect_kind="lm")["vocab"] == ["a"]


@pytest.mark.parametrize("damage", ["flip-middle", "flip-first", "truncate", "empty"])
def test_damaged_model_is_one_line_artifact_error(tmp_path, damage):
    folder = _stage(tmp_path / "pretrain")
    model = folder / "model.pt"
    if damage == "flip-middle":
        _flip_byte(model)  # inside the tensor data: torch.load would happily return wrong weights
    elif damage == "flip-first":
        _flip_byte(model, 0.0)
    elif damage == "truncate":
        model.write_bytes(model.read_bytes()[:-100])
    else:
        model.write_bytes(b"")
    assert not is_complete(folder, "k1")
    with pytest.raises(ArtifactError) as err:
        load_model_file(folder)
    message = str(err.value)
    assert "\n" not in message and "model.pt" in message and "corrupted or truncated" in message


def test_damaged_side_file_or_manifest_makes_stage_incomplete(tmp_path):
    folder = _stage(tmp_path / "a")
    (folder / "metrics.json").write_text('{"x": 2.0}')
    assert not is_complete(folder)
    with pytest.raises(ArtifactError, match="metrics.json"):
        verify_folder(folder)
    folder = _stage(tmp_path / "b")
    (folder / "manifest.json").write_text('{"files": ')
    assert not is_complete(folder)
    with pytest.raises(ArtifactError, match="corrupted manifest"):
        load_model_file(folder)


def test_modified_file_is_rehashed(tmp_path):
    folder = _stage(tmp_path / "s")
    assert is_complete(folder)  # hashes and remembers
    _flip_byte(folder / "model.pt")
    assert not is_complete(folder)  # the change of size/mtime is noticed, the file is hashed again


def test_disk_full_while_writing_leaves_nothing(tmp_path, monkeypatch):
    old = _stage(tmp_path / "classify", key="old")
    before = read_manifest(old)

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts.torch, "save", full)
    with pytest.raises(ArtifactError) as err:
        _stage(tmp_path / "classify", key="new")
    assert "No space left on device" in str(err.value) and "\n" not in str(err.value)
    assert read_manifest(old) == before and is_complete(old, "old")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classify"]  # no temp folder left behind

"""Stage artifacts: corrupted or truncated files are caught by their sha256; failed writes leave nothing."""
import errno

import pandas as pd
import pytest
import torch

from pipeline.artifacts import stage_folder
from pipeline.artifacts.model_file import ModelFile, load_model_file
from pipeline.artifacts.stage_folder import is_complete, read_manifest, verify_folder, write_stage
from pipeline.errors import ArtifactError


def _model(**changes) -> ModelFile:
    fields = dict(kind="lm", stage="pretrain", backbone="awd_lstm", arch={"vocab_size": 1, "emb_sz": 4},
                  config={"seed": 3}, state_dict={"w": torch.arange(1000, dtype=torch.float32)}, vocab=["a"],
                  tokenizer={"kind": "spacy"})
    return ModelFile(**fields | changes)


def _stage(folder, key="k1", model=None):
    return write_stage(folder, model=model or _model(), metrics={"x": 1.0}, history=pd.DataFrame({"epoch": [0]}),
                       card="# card\n", cache_key=key)


def _flip_byte(path, where=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_intact_stage_loads_and_is_complete(tmp_path):
    folder = _stage(tmp_path / "pretrain")
    assert is_complete(folder, "k1") and not is_complete(folder, "other-key")
    assert load_model_file(folder, expect_kind="lm").vocab == ["a"]


def test_model_file_round_trips_every_field(tmp_path):
    written = _model(kind="classifier", stage="classify", classes=["neg", "pos"],
                     samples={"train": [3, 1], "valid": [0], "test": [2]}, data_dir="/data")
    read = load_model_file(_stage(tmp_path / "classify", model=written), expect_kind="classifier")
    assert {k: v for k, v in vars(read).items() if k != "state_dict"} == \
        {k: v for k, v in vars(written).items() if k != "state_dict"}
    assert torch.equal(read.state_dict["w"], written.state_dict["w"])
    with pytest.raises(ArtifactError, match="holds a 'classifier' model, expected 'lm'"):
        load_model_file(tmp_path / "classify", expect_kind="lm")


@pytest.mark.parametrize("change, message", [
    ({"format": 0}, "format 0, this version reads 1"),
    ({"kind": "tokenizer"}, "malformed model file"),
    ({"config": "{not json"}, "malformed model file"),
    ({"vocab": None, "state_dict": "weights"}, "malformed model file"),
])
def test_model_file_of_another_version_or_shape_is_refused(tmp_path, monkeypatch, change, message):
    real_save = torch.save
    monkeypatch.setattr(stage_folder.torch, "save", lambda blob, path: real_save(blob | change, path))
    folder = _stage(tmp_path / "pretrain")
    with pytest.raises(ArtifactError, match=message):
        load_model_file(folder)


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

    monkeypatch.setattr(stage_folder.torch, "save", full)
    with pytest.raises(ArtifactError) as err:
        _stage(tmp_path / "classify", key="new")
    assert "No space left on device" in str(err.value) and "\n" not in str(err.value)
    assert read_manifest(old) == before and is_complete(old, "old")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classify"]  # no temp folder left behind


# --- a real full disk (issue 11): torch.save raised `RuntimeError [enforce fail at inline_container.cc]`
# with no "No space left" and left a *.tmp-PID checkpoint file behind ------------------------------

BIG = {"kind": "lm", "state_dict": {"w": torch.zeros(200_000)}, "vocab": ["a"]}  # 800 kB


def _leftovers(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


def test_save_torch_on_a_full_disk_is_enospc(full_disk):
    disk = full_disk("64k")
    with pytest.raises(OSError) as err:
        stage_folder.save_torch(BIG, disk / "model.pt")
    assert err.value.errno == errno.ENOSPC and "No space left on device" in str(err.value)


def test_save_torch_through_a_file_that_fills_up(tmp_path, monkeypatch):
    """The emulation used where a test may not mount: a file object whose write raises ENOSPC."""
    from tests.conftest import NoSpaceFile

    monkeypatch.setattr(stage_folder, "open", lambda path, mode="r": NoSpaceFile(path, budget=5000), raising=False)
    with pytest.raises(OSError) as err:
        stage_folder.save_torch(BIG, tmp_path / "model.pt")
    assert err.value.errno == errno.ENOSPC


def test_stage_write_on_a_full_disk_is_one_line_and_leaves_nothing(full_disk):
    disk = full_disk("64k")
    with pytest.raises(ArtifactError) as err:
        write_stage(disk / "pretrain", model=_model(state_dict=BIG["state_dict"]), metrics={"x": 1.0},
                    history=pd.DataFrame({"epoch": [0]}),
                    card="# card\n", cache_key="k")
    message = str(err.value)
    assert "No space left on device" in message and "nothing was written" in message and "\n" not in message
    assert sorted(p.name for p in disk.iterdir()) == []  # no temp folder left behind


def test_checkpoint_on_a_full_disk_is_one_line_and_leaves_no_temp_file(full_disk):
    from types import SimpleNamespace

    from pipeline.training.checkpoint import Checkpointer

    disk = full_disk("64k")
    ckpt = Checkpointer(disk / "pretrain.partial", "k")
    model = torch.nn.Linear(400, 500)  # 800 kB of weights
    learn = SimpleNamespace(model=model, opt=SimpleNamespace(state_dict=lambda: {"state": [], "hypers": []}),
                            dls=SimpleNamespace(loaders=[]))
    with pytest.raises(ArtifactError) as err:
        ckpt.save("pretrain", learn, 1, 2, SimpleNamespace(rows=[], batch_losses=[]))
    assert "No space left on device" in str(err.value) and "\n" not in str(err.value)
    assert _leftovers(disk) == [] and not (disk / "pretrain.partial").exists()


def test_ctrl_c_during_a_save_is_an_interrupt_and_leaves_no_temp_file(tmp_path, monkeypatch):
    """Ctrl-C inside torch.save's write became `RuntimeError: [enforce fail ...]` (a traceback, exit 1)
    and left the checkpoint's *.tmp-PID file: the interrupt itself must come out, and nothing stay."""
    from types import SimpleNamespace

    from pipeline.training.checkpoint import Checkpointer
    from tests.conftest import NoSpaceFile

    class InterruptedFile(NoSpaceFile):
        def write(self, data):
            raise KeyboardInterrupt

    monkeypatch.setattr(stage_folder, "open", lambda path, mode="r": InterruptedFile(path), raising=False)
    with pytest.raises(KeyboardInterrupt):
        stage_folder.save_torch(BIG, tmp_path / "model.pt")
    ckpt = Checkpointer(tmp_path / "adapt.partial", "k")
    learn = SimpleNamespace(model=torch.nn.Linear(2, 2), opt=SimpleNamespace(state_dict=lambda: {"state": [], "hypers": []}),
                            dls=SimpleNamespace(loaders=[]))
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("adapt", learn, 1, 2, SimpleNamespace(rows=[], batch_losses=[]))
    assert _leftovers(tmp_path) == [] and not (tmp_path / "adapt.partial").exists()

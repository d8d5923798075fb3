"""Published language models as stage 1 (`pretrain.init_from`), read without running any code.

`init_from` names either a model of the registry (`pipeline/models/models.toml`: fastai's WikiText-103
AWD-LSTMs `wt103-fwd` and `wt103-bwd`), downloaded once into `<cache dir>/models/<name>/` with the
datasets' progress bar, atomic write and safe unpacking (`pipeline.data.download`), or a local folder.
`model.direction=backward` takes a registry model's backward twin.

fastai's model zoo ships a state dict (`*.pth`) and the vocabulary as a pickle (`*.pkl`). fastai's
`language_model_learner` loads them with `torch.load(..., weights_only=False)` and `load_pickle`:
both run whatever code a file carries. Here the state dict loads with `weights_only=True`, and the
vocabulary goes through `read_vocab_pickle`, an unpickler that resolves no global name at all, so
the only things it can build are plain containers, strings and numbers: it returns a list of
strings or refuses the file in one line.
"""
from __future__ import annotations

import io
import pickle
from functools import lru_cache
from pathlib import Path

import tomllib

from pipeline.errors import ArtifactError, ConfigError

MODELS_PATH = Path(__file__).parent / "models.toml"  # inside the package: found from any install


@lru_cache(maxsize=1)
def registry() -> dict[str, dict]:
    with open(MODELS_PATH, "rb") as fh:
        return tomllib.load(fh)["models"]


def is_published(name: str | None) -> bool:
    return name is not None and name in registry()


def checkpoint_folder(init_from: str, direction: str, cache_dir: str | None = None) -> Path:
    """The local folder `init_from` stands for: a registry model (downloaded on first use), or a
    folder given by its path."""
    models = registry()
    if init_from in models:
        name = _for_direction(init_from, models[init_from], direction)
        return download_model(name, models[name], cache_dir)
    folder = Path(init_from).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"pretrain.init_from={init_from!r}: not a folder, and not a published model "
                          f"(known: {', '.join(models)})")
    return folder


def describe(init_from: str | None, direction: str) -> str | None:
    """Where stage 1's weights came from, for metrics.json and the card: a registry model's name,
    title and URL, or the folder."""
    if init_from is None:
        return None
    models = registry()
    if init_from not in models:
        return str(Path(init_from).expanduser().resolve())
    name = _for_direction(init_from, models[init_from], direction)
    return f"{name}: {models[name]['title']}, {models[name]['url']}"


def _for_direction(name: str, entry: dict, direction: str) -> str:
    if entry.get("direction", "forward") == direction:
        return name
    twin = entry.get(direction)
    if twin is None:
        raise ConfigError(f"pretrain.init_from={name}: a {entry.get('direction', 'forward')} model with no "
                          f"{direction} twin; model.direction={direction} needs one")
    return twin


def download_model(name: str, entry: dict, cache_dir: str | None = None) -> Path:
    """`<cache dir>/models/<name>/`, downloaded and unpacked unless it is there (it only ever appears
    complete: unpacking renames a finished folder into place)."""
    from pipeline.config_base import default_cache_dir
    from pipeline.data.download import download_dataset

    folder = default_cache_dir(cache_dir) / "models" / name
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    return download_dataset(name, entry, folder.parent)


class _Inert:
    """Stands in for a class a checkpoint names beside its weights (an optimizer's bookkeeping): it is
    built from plain data and ignored; the named class itself is never imported."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _NoGlobals(pickle.Unpickler):
    """Builds lists, dicts, tuples, strings and numbers; a reference to any class or function (the
    only way a pickle runs code) is refused before it is looked up."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"it refers to {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it holds a persistent reference")


def read_vocab_pickle(path: Path) -> list[str]:
    """The vocabulary of a fastai model folder: a pickled list of strings, and nothing else."""
    try:
        vocab = _NoGlobals(io.BytesIO(Path(path).read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError, OSError) as err:
        raise ArtifactError(f"{path}: not a plain vocabulary pickle ({err}); refusing it: a pickle that "
                            "refers to code could run it") from None
    if not isinstance(vocab, list) or not vocab or not all(isinstance(token, str) for token in vocab):
        raise ArtifactError(f"{path}: not a vocabulary: expected a non-empty list of strings, got "
                            f"{type(vocab).__name__}")
    return vocab


def fastai_files(folder: Path) -> tuple[Path, Path]:
    """(state dict, vocabulary) of a fastai model folder: its one `*.pth` and its one `*.pkl`."""
    weights, vocabs = sorted(folder.glob("*.pth")), sorted(folder.glob("*.pkl"))
    if len(weights) != 1 or len(vocabs) != 1:
        found = ", ".join(p.name for p in weights + vocabs) or "neither"
        raise ArtifactError(f"{folder}: a fastai model folder holds one state dict (*.pth) and one vocabulary "
                            f"(*.pkl), as fastai's model zoo archives unpack; found {found}")
    return weights[0], vocabs[0]


def load_fastai_lm(folder: Path) -> tuple[dict, list[str], Path]:
    """(state dict, vocabulary, weights file) of a fastai language model folder, checked to agree."""
    import torch

    weights, vocab_file = fastai_files(folder)
    try:
        # A file saved with its optimizer (fastai's `Learner.save(with_opt=True)`) names fastcore's `L`
        # beside the weights: every such name becomes `_Inert`, so nothing of it is imported or run.
        others = torch.serialization.get_unsafe_globals_in_checkpoint(weights)
        with torch.serialization.safe_globals([(_Inert, name) for name in others]):
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (unpickling errors of every kind: one line, never code)
        raise ArtifactError(f"{weights}: cannot load as a plain state dict with weights_only=True "
                            f"({str(err).splitlines()[0]})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # saved with its optimizer, as fastai's `Learner.save` does
    if not isinstance(state, dict) or "0.encoder.weight" not in state:
        raise ArtifactError(f"{weights}: not a fastai AWD-LSTM language model (no 0.encoder.weight)")
    vocab = read_vocab_pickle(vocab_file)
    if len(vocab) != state["0.encoder.weight"].shape[0]:
        raise ArtifactError(f"{folder}: the vocabulary has {len(vocab)} tokens but the embedding "
                            f"{state['0.encoder.weight'].shape[0]} rows")
    return state, vocab, weights

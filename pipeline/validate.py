"""Everything a run will read or write, checked before any stage starts.

A run that fails after stages 1-2 trained (a bad classify file, a typo in `tokenizer.lang`,
`device=cuda` on a machine without a GPU) wastes the time they took, so the flow and the CLI
call `check_run` first. Each problem raises one UlmfitError naming the file, row or setting:

- data: the data of every stage the run will compute is loaded and validated as the stage will load it
  (each registry entry's `load_data`: pretrain, adapt and classify, including the train / validation /
  test split sizes). A stage that comes from its folder or the stage store reads no data, so its data
  is not loaded: a fully cached rerun loads no corpus (`pipeline.artifacts.store.stages_to_compute`);
- settings that only fail deep inside a library: the device (always), and when a stage will compute, the
  spaCy language and the model itself (built at a tiny vocabulary and run on one small batch, so dropout
  multipliers that make a probability exceed 1, or a chunk longer than the positions, fail here);
- outputs: the run directory, its lock file and every stage folder the run will replace
  (a folder or file ulmfit did not write is never replaced, see `artifacts.foreign_content`).

Each run is checked once: `ulmfit run` and `ulmfit compare` check before Prefect starts and hand the
flow what they checked; a flow started from the UI checks first. Compare's cells that share a stage's
data share its check (`passed`, one set for the grid). A stage that computes loads its data twice, here
and when it starts (1-5 s on the cpu preset, BENCHMARKS.md): the price of failing before stage 1 trains
and before Prefect starts or anything is written.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.artifacts.layout import chain_folders, chains, run_folders
from pipeline.artifacts.locking import LOCK_NAME
from pipeline.artifacts.stage_folder import foreign_checkpoints, partial_dir, refuse_foreign
from pipeline.artifacts.store import stages_to_compute
from pipeline.config import RunConfig
from pipeline.data.corpora import is_registered, resolve_data_dir
from pipeline.errors import ConfigError, RunDirError, UlmfitError
from pipeline.models.zoo import is_published
from pipeline.stages.registry import REGISTRY, get_stage


def check_run(cfg: RunConfig, run_dir: str | Path, folders: dict | None = None, passed: set | None = None,
              rerun: str | None = None) -> None:
    """Raise one UlmfitError for the first problem found; return quietly when the run can start.
    `folders` (stage -> folder of one chain, as compare cells share them) default to every folder the run
    writes (`pipeline.artifacts.layout`: each direction's chain of stage folders, and the ensemble's).
    `rerun` is `--rerun`'s stage. A check whose key is in `passed` (same settings, same files) is skipped;
    each one that passes is added to it."""
    passed = set() if passed is None else passed
    run_dir = Path(run_dir).expanduser().resolve()
    outputs = run_folders(cfg, run_dir) if folders is None else [Path(f).expanduser().resolve()
                                                                  for f in folders.values()]
    check_outputs(run_dir, outputs)
    _check_device(cfg.device)  # wrong whether or not a stage runs
    chain_list = ([(chain_cfg, chain_folders(run_dir, suffix)) for suffix, chain_cfg in chains(cfg)]
                  if folders is None else [(cfg, folders)])
    todo = [(chain_cfg, name) for chain_cfg, chain in chain_list for name in stages_to_compute(chain_cfg, chain, rerun)]
    if not todo:  # every stage comes from its folder or the store: nothing reads data or builds a model
        return
    settings = [cfg.device, cfg.tokenizer, cfg.model, cfg.classify, cfg.pretrain.bptt, cfg.adapt.bptt,
                cfg.pretrain.init_from]
    _once("settings", settings, cfg, check_settings, passed)
    for chain_cfg, name in todo:
        section = getattr(chain_cfg, name, None)
        _once(f"{name} data", [section, chain_cfg.seed], chain_cfg, get_stage(name).load_data, passed)


def _once(what: str, depends_on: list, cfg: RunConfig, check, passed: set) -> None:
    """Run `check(cfg)` unless it passed before for the same settings and files (its key is in `passed`)."""
    key = _memo_key(what, depends_on, cfg)
    if key not in passed:
        check(cfg)
        passed.add(key)


# --- outputs ---------------------------------------------------------------------------------

def check_outputs(run_dir: Path, stage_folders: list[Path]) -> None:
    """The run directory can be created and written, and nothing the run replaces is the user's."""
    existing = next((p for p in [run_dir, *run_dir.parents] if p.exists()), None)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: exists and is a file, not a folder; choose another --out")
    if existing is not None and not existing.is_dir():
        raise RunDirError(f"{run_dir}: cannot be created, {existing} is a file; choose another --out")
    if existing is not None and not _writable(existing):
        raise RunDirError(f"{run_dir}: cannot be used as the run directory ({existing} is not writable)")
    lock = run_dir / LOCK_NAME
    if lock.is_symlink():
        raise RunDirError(f"{lock}: is a symbolic link; ulmfit never writes through one: remove it")
    if lock.exists() and not lock.is_file():
        raise RunDirError(f"{lock}: is not a regular file; remove it or choose another --out")
    for folder in stage_folders:
        refuse_foreign(folder)
        refuse_foreign(partial_dir(folder), foreign_checkpoints)


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


# --- settings that fail late -----------------------------------------------------------------

def check_settings(cfg: RunConfig) -> None:
    _check_device(cfg.device)
    if cfg.pretrain.init_from is not None:
        _check_checkpoint(cfg)
    if cfg.tokenizer.kind == "spacy" and cfg.pretrain.init_from is None:
        _check_spacy_language(cfg.tokenizer.lang)
    _probe_models(cfg)


def _check_checkpoint(cfg: RunConfig) -> None:
    """init_from: the published model downloaded (or the local folder found), its files readable."""
    from pipeline.models.backbones import get_backbone
    from pipeline.models.direction import single_direction
    from pipeline.models.zoo import checkpoint_folder

    backbone = get_backbone(cfg.model.backbone)
    if backbone.check_checkpoint is None:
        raise ConfigError(f"pretrain.init_from: the {backbone.name} backbone cannot load checkpoints")
    for _, chain_cfg in chains(cfg):  # both directions: the forward model and its backward twin
        direction = single_direction(chain_cfg.model.direction)
        backbone.check_checkpoint(checkpoint_folder(cfg.pretrain.init_from, direction, cfg.cache_dir))


def _check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda, but torch sees no CUDA GPU on this machine (or this torch build has no "
                          "CUDA support); use device=auto or device=cpu")


def _check_spacy_language(lang: str) -> None:
    import spacy

    try:
        spacy.util.get_lang_class(lang)
    except ImportError:
        raise ConfigError(f"tokenizer.lang={lang!r}: spaCy has no language {lang!r}; use a spaCy language "
                          "code such as en, de, fr or xx (multi-language)") from None


def _probe_models(cfg: RunConfig) -> None:
    """Build the language model and the classifier at a tiny vocabulary and train-mode forward one
    small batch each: settings that break only when a layer runs (a dropout multiplier that
    makes a probability exceed 1) fail here, in a second, instead of after hours of stages 1-2."""
    import torch

    from pipeline.data.encoders import WORD_SPECIALS
    from pipeline.models.backbones import get_backbone

    if cfg.pretrain.init_from is not None:  # the architecture comes from the checkpoint
        return
    backbone = get_backbone(cfg.model.backbone)
    vocab = 2 * WORD_SPECIALS.n_reserved + 8
    arch = backbone.make_arch(vocab, cfg.model, WORD_SPECIALS)
    limit = backbone.max_seq_len(arch)
    for stage in (name for name, entry in REGISTRY.items() if entry.model_kind == "lm"):  # every LM stage
        bptt = getattr(getattr(cfg, stage, None), "bptt", None)
        if limit is not None and bptt is not None and bptt > limit:
            raise ConfigError(f"{stage}.bptt={bptt} exceeds the {backbone.name} model's {limit} positions")
    ids = torch.randint(WORD_SPECIALS.n_reserved, vocab, (2, 8))
    torch_state = torch.get_rng_state()  # the probe must not shift the run's random numbers
    try:
        for what, build in (("language model", lambda: backbone.build_lm(arch)),
                            ("classifier", lambda: backbone.build_classifier(arch, 2, cfg.classify, WORD_SPECIALS))):
            try:
                model = build().train()
                model(ids)
            except UlmfitError:
                raise
            except Exception as err:  # noqa: BLE001 - reported as the settings' problem, in one line
                raise ConfigError(_probe_message(cfg, what, err)) from None
    finally:
        torch.set_rng_state(torch_state)


def _probe_message(cfg: RunConfig, what: str, err: Exception) -> str:
    reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    hint = ""
    if "dropout" in reason or "bernoulli" in reason:
        hint = (f" (every dropout is scaled by model.drop_mult={cfg.model.drop_mult} and, in the classifier, "
                f"classify.drop_mult={cfg.classify.drop_mult}; each scaled probability must stay within 0..1)")
    return f"the {cfg.model.backbone} {what} cannot run with these settings: {reason}{hint}"


# --- data ------------------------------------------------------------------------------------

def _memo_key(what: str, depends_on: list, cfg: RunConfig) -> str:
    """The settings a check depends on, the data folder, and the size and mtime of every user file."""
    paths = [cfg.adapt.corpus, cfg.classify.corpus, cfg.classify.test_corpus, cfg.pretrain.init_from]
    stamps = {}
    for raw in filter(None, paths):
        if is_registered(raw) or is_published(raw):
            continue
        path = Path(raw).expanduser()
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        stamps[raw] = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    plain = [v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in depends_on]
    return json.dumps([what, plain, str(resolve_data_dir(cfg.data_dir)), stamps], sort_keys=True, default=str)

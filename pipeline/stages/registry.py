"""The stage registry: what the flow, the CLI, the UI reporting, the cache and the notebooks know
about each stage, in one entry per stage (as `pipeline.models.backbones` does for backbones).

An entry names the stage, the stage it builds on, its module (whose `run(ctx: StageContext) ->
StageResult` is its one entry point, imported only when the stage runs), its headline metric, how
many epochs it trains (UI progress) and what its model.pt holds. Its code version, part of its
cache key, is the content of its module and of every module of this package the module imports,
directly or not, found by reading the import statements: editing or adding a module a stage uses
invalidates that stage's cache, and nothing else's.

Adding a stage is one module with a `run(ctx)` plus one `register(...)` line below; a stage that
has settings of its own also gets a section in `pipeline.config.RunConfig`, named after it.
Stages run in registration order, so a stage registers after the stage it builds on; one that goes
in the middle of the chain names the stage it goes before (`register(stage, before="classify")`).
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib
import importlib.util
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from pipeline.config import RunConfig
from pipeline.errors import ConfigError
from pipeline.stages.context import StageContext, StageResult
from pipeline.training.memory import release_memory

log = logging.getLogger("ulmfit")
PACKAGE = "pipeline"


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # module holding `run(ctx: StageContext) -> StageResult`
    upstream: str | None  # the stage whose folder it reads (None: it starts from the data alone)
    headline: tuple[str, str]  # (key in metrics.json, label): the number the run summary prints
    epochs: Callable[[RunConfig], int]  # training epochs it will run with this config (UI progress)
    model_kind: str  # what its model.pt holds: "lm" or "classifier"
    # "module:function" loading the stage's data from the config exactly as the stage does (None: it reads
    # only its upstream's folder); the validation calls it for each stage a run will compute
    data: str | None = None

    def entry(self) -> Callable[[StageContext], StageResult]:
        return importlib.import_module(self.module).run

    def load_data(self, cfg: RunConfig):
        """The stage's data, loaded and validated as the stage will (a bad file raises one UlmfitError)."""
        if self.data is None:
            return None
        module, _, function = self.data.partition(":")
        return getattr(importlib.import_module(module), function)(cfg)

    def summary(self) -> str:
        """The first line of the module's docstring (read, not imported: stage modules import fastai)."""
        tree = ast.parse(_module_file(self.module).read_text())
        return (ast.get_docstring(tree) or self.name).strip().splitlines()[0]

    def code_version(self) -> str:
        return code_version(self.module)


REGISTRY: dict[str, Stage] = {}


def register(stage: Stage, before: str | None = None) -> Stage:
    """Add a stage at the end of the chain; or, with `before`, in the middle: in front of that stage,
    which then builds on the new one (its upstream re-pointed), so the chain stays one line."""
    if stage.upstream is not None and stage.upstream not in REGISTRY:
        raise ConfigError(f"stage {stage.name}: its upstream {stage.upstream!r} must be registered before it")
    if before is None:
        REGISTRY[stage.name] = stage
        return stage
    following = get_stage(before)
    if following.upstream != stage.upstream:
        raise ConfigError(f"stage {stage.name}: cannot go before {before}, which builds on {following.upstream!r}, "
                          f"not on {stage.upstream!r}")
    entries = list(REGISTRY.items())
    REGISTRY.clear()
    for name, entry in entries:
        if name == before:
            REGISTRY[stage.name] = stage
            entry = dataclasses.replace(entry, upstream=stage.name)
        REGISTRY[name] = entry
    return stage


def unregister(name: str) -> None:
    """Remove a stage; the stages that built on it build on its upstream again."""
    removed = REGISTRY.pop(name, None)
    if removed is None:
        return
    for other, entry in list(REGISTRY.items()):
        if entry.upstream == name:
            REGISTRY[other] = dataclasses.replace(entry, upstream=removed.upstream)


def get_stage(name: str) -> Stage:
    if name not in REGISTRY:
        raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def stage_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def classifier_stage() -> str:
    """The registered stage that trains the classifier: the first one whose model is a classifier
    (a later one, such as an export, only builds on it)."""
    return next(name for name, stage in REGISTRY.items() if stage.model_kind == "classifier")


def depends_on(name: str, ancestor: str) -> bool:
    """True if `name` is `ancestor` or builds on it, directly or not (what `--rerun ancestor` recomputes)."""
    while name is not None:
        if name == ancestor:
            return True
        name = get_stage(name).upstream
    return False


def run_stage(ctx: StageContext) -> StageResult:
    """Run a stage's entry point; on success drop its checkpoints, on failure keep them for a resume."""
    stage = get_stage(ctx.stage)
    if stage.upstream is not None:
        ctx.upstream()  # one clear error before any work
    try:
        result = stage.entry()(ctx)
    except BaseException:
        if ctx.checkpointer is not None and ctx.checkpointer.folder.exists():
            log.info("checkpoints kept in %s: rerun the same command to resume", ctx.checkpointer.folder)
        raise
    finally:
        release_memory()  # the flow runs every stage in one process: start the next from what is in use
    if ctx.checkpointer is not None:
        ctx.checkpointer.clear()
    return result


# --- code versions: a module's import closure inside this package ----------------------------------

def _module_file(name: str) -> Path | None:
    """The source file of a module, found without importing it (None: not a module, e.g. a function)."""
    if name.split(".")[0] == PACKAGE:
        base = Path(importlib.util.find_spec(PACKAGE).origin).parent.joinpath(*name.split(".")[1:])
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                return path
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".py") else None


def _imports(path: Path, name: str) -> set[str]:
    """Every module name `path` (module `name`) may import, at the top or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pipeline import lm`
    return found


def import_closure(module: str) -> dict[str, Path]:
    """module name -> file, for `module` and every module of this package it imports, transitively
    (package __init__ files included: importing a module runs them)."""
    closure: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in closure or (name != module and name.split(".")[0] != PACKAGE):
            continue
        path = _module_file(name)
        if path is None:
            continue
        closure[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(_imports(path, name))
    return closure


@lru_cache(maxsize=None)
def code_version(module: str) -> str:
    digest = hashlib.sha256()
    for name, path in sorted(import_closure(module).items()):
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# --- the stages -------------------------------------------------------------------------------------

register(Stage("pretrain", "pipeline.stages.pretrain", None, ("valid_perplexity", "WikiText valid perplexity"),
               lambda cfg: cfg.pretrain.epochs, "lm", "pipeline.stages.pretrain:corpus_texts"))
register(Stage("adapt", "pipeline.stages.adapt", "pretrain",
               ("held_out_perplexity_after", "held-out perplexity after adaptation"),
               lambda cfg: cfg.adapt.frozen_epochs + cfg.adapt.epochs, "lm", "pipeline.stages.adapt:held_out_split"))
register(Stage("classify", "pipeline.stages.classify", "adapt", ("test_accuracy", "test accuracy"),
               lambda cfg: sum(cfg.classify.epochs_per_phase), "classifier",
               "pipeline.stages.classify_data:stage_splits"))

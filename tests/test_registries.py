"""The registries are the only lists of stages and backbones: one registered from outside pipeline/
(tests/plugins.py, tests/plugin_stage.py) shows up in the config, the CLI, the UI's parameter schema, the flow and its
summary; and a stage's code version is its module's import closure inside pipeline/."""
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.artifacts.stage_folder import read_metrics
from pipeline.config import load_config, stage_config
from pipeline.data.encoders import WORD_SPECIALS
from pipeline.errors import ConfigError
from pipeline.stages import registry
from tests import plugins
from tests.test_flow import WORK_MARKERS

REPO = Path(__file__).resolve().parents[1]
STAGES = ["pretrain", "adapt", "lm_check", "classify", "export"]
SUMMARY = re.compile(r"^  (\w+)\s+(Completed|Cached)\s+[\d.]+s  ", re.M)


@pytest.fixture()
def installed():
    plugins.install()
    try:
        yield
    finally:
        plugins.uninstall()


def test_a_registered_backbone_gets_a_config_section_and_cli_choice(installed, capsys):
    from flows.cli import main
    from pipeline.models.backbones import get_backbone

    cfg = load_config("smoke", ["model.backbone=tiny", "model.tiny.n_hid=40"])
    assert cfg.model.sizes() == plugins.TinySizes(n_hid=40)
    assert stage_config(cfg, "pretrain")["model"]["sizes"] == {"emb_sz": 16, "n_hid": 40, "n_layers": 1, "lr_mult": 1.0}
    assert get_backbone("tiny").make_arch(50, cfg.model, WORD_SPECIALS)["n_hid"] == 40  # sizes reach the builder
    with pytest.raises(ConfigError, match="model.tiny.n_layers: Input should be greater than 0"):
        load_config("smoke", ["model.tiny.n_layers=0"])
    assert main(["run", "--preset", "smoke", "--set", "model.tiny.emb_sz=8", "--show-config"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["tiny"] == {"emb_sz": 8, "n_hid": 24, "n_layers": 1, "lr_mult": 1.0}
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "of awd_lstm, gpt, bert, tiny (default: all)" in " ".join(capsys.readouterr().out.split())
    assert main(["stages"]) == 0
    listed = capsys.readouterr().out
    assert "tiny (a test backbone)" in listed and "export    Export: the classifier's weights re-saved" in listed
    assert all(word in listed for word in ("pretrain", "adapt", "classify", "awd_lstm", "smoke"))


def test_without_the_plugin_its_section_is_refused():
    with pytest.raises(ConfigError, match=r"model: unknown key\(s\) \['tiny'\]"):
        load_config("smoke", ["model.tiny.n_hid=40"])
    with pytest.raises(ConfigError, match="unknown backbone 'tiny'"):
        load_config("smoke", ["model.backbone=tiny"])


def _python(code: str, timeout=600):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    proc.output = proc.stdout + proc.stderr
    return proc


def test_the_ui_parameter_schema_lists_registered_entries():
    proc = _python("""
        import json
        from tests import plugins
        plugins.install()
        from prefect.utilities.callables import parameter_schema
        from flows.compare_flow import compare_flow
        from flows.ulmfit_flow import ulmfit_flow
        print(json.dumps([parameter_schema(f).model_dump() for f in (ulmfit_flow, compare_flow)]))
    """)
    assert proc.returncode == 0, proc.output[-3000:]
    run, compare = json.loads(proc.stdout.splitlines()[-1])
    assert run["properties"]["backbone"]["anyOf"][0]["enum"] == ["awd_lstm", "gpt", "bert", "tiny"]
    assert run["properties"]["rerun"]["anyOf"][0]["enum"] == STAGES
    assert compare["properties"]["backbones"]["items"]["enum"] == ["awd_lstm", "gpt", "bert", "tiny"]
    assert compare["properties"]["backbones"]["default"] == ["awd_lstm", "gpt", "bert", "tiny"]


def test_a_stage_registered_in_the_middle_of_the_chain_is_built_on(installed):
    assert list(registry.REGISTRY) == STAGES
    assert [registry.REGISTRY[s].upstream for s in STAGES] == [None, "pretrain", "adapt", "lm_check", "classify"]
    assert registry.classifier_stage() == "classify" and registry.depends_on("classify", "lm_check")
    with pytest.raises(ConfigError, match="cannot go before classify, which builds on 'lm_check', not on 'pretrain'"):
        registry.register(registry.Stage("x", "tests.plugin_stage", "pretrain", ("a", "b"), lambda cfg: 0, "lm"),
                          before="classify")
    plugins.uninstall()
    assert list(registry.REGISTRY) == ["pretrain", "adapt", "classify"]
    assert registry.REGISTRY["classify"].upstream == "adapt"  # unregistering re-points what built on it


@pytest.mark.slow
def test_registered_stages_and_backbone_run_in_the_flow(installed, tmp_path, data_dir):
    """The smoke flow with a stage in the middle of the chain, one at its end and a new backbone: five stages
    with their summary lines, then a fully cached rerun, `--rerun lm_check` (the stages built on it, not those
    before it), validation refusing a user's file in the new stage's folder, compare's cells, the notebooks'
    API and predict. In this process, but for `--rerun` (see below)."""
    from pipeline.use import inspection
    from pipeline.use.predict import predict
    from tests.test_flow import ulmfit_here

    run_dir, cmp_dir, other = tmp_path / "run", tmp_path / "cmp", tmp_path / "other"
    run = ["run", "--preset", "smoke", "--set", "model.backbone=tiny", "--out", str(run_dir)]
    first = ulmfit_here(*run)
    assert first.returncode == 0, first.output[-3000:]
    assert dict(SUMMARY.findall(first.stdout)) == dict.fromkeys(STAGES, "Completed"), first.stdout[-2000:]
    export = read_metrics(run_dir / "export")
    assert f"classifier weights: {export['n_weights']:.4f}  -> {run_dir / 'export'}" in first.stdout
    assert read_metrics(run_dir / "pretrain")["backbone"] == "tiny"
    assert read_metrics(run_dir / "lm_check")["n_weights"] > 0
    again = ulmfit_here(*run)
    assert again.returncode == 0, again.output[-3000:]
    assert dict(SUMMARY.findall(again.stdout)) == dict.fromkeys(STAGES, "Cached")
    assert not any(marker in again.output for marker in WORK_MARKERS)
    # The flow's `rerun` parameter is typed with the stages registered when flows/ was imported: a plugin
    # registers first, so this one runs in a fresh process.
    rerun = _python(f"""
        import sys
        from tests import plugins
        plugins.install()
        from flows.cli import main
        sys.exit(main({[*run, "--rerun", "lm_check"]!r}))
    """)
    assert rerun.returncode == 0, rerun.output[-3000:]
    assert dict(SUMMARY.findall(rerun.stdout)) == {"pretrain": "Cached", "adapt": "Cached", "lm_check": "Completed",
                                                  "classify": "Completed", "export": "Completed"}

    (other / "lm_check").mkdir(parents=True)
    (other / "lm_check" / "notes.txt").write_text("mine")
    refused = ulmfit_here(*run[:-1], str(other))
    assert refused.returncode != 0 and str(other / "lm_check") in refused.output, refused.output[-2000:]

    compare = ulmfit_here("compare", "--preset", "smoke", "--backbones", "tiny", "--variants", "full",
                          "--out", str(cmp_dir))
    assert compare.returncode == 0, compare.output[-3000:]
    cell = read_metrics(cmp_dir / "tiny" / "lm_check-full-seed42")  # a cell's own folder for the new stage
    assert cell["n_weights"] == read_metrics(run_dir / "lm_check")["n_weights"]
    assert inspection.stage_dir(run_dir, "lm_check") == run_dir / "lm_check"
    assert len(predict(run_dir, ["a wonderful film", "a dull mess"])) == 2


def test_a_stage_code_version_is_its_import_closure():
    closure = {name: registry.import_closure(stage.module) for name, stage in registry.REGISTRY.items()}
    assert {"pipeline.training.lm", "pipeline.training.learner", "pipeline.stages.lm_stage"} <= set(closure["pretrain"])
    assert "pipeline.models.vocab_transfer" in closure["adapt"] and "pipeline.models.vocab_transfer" not in closure["pretrain"]
    assert "pipeline.stages.classify_data" in closure["classify"] and "pipeline.training.lm" not in closure["classify"]
    for modules in closure.values():  # the flow's plumbing and the registry itself are not a stage's code
        assert not {"pipeline.artifacts.store", "pipeline.study.compare", "pipeline.stages.registry", "pipeline.stages.run_one"} & set(modules)
    assert len({registry.code_version(s.module) for s in registry.REGISTRY.values()}) == 3


def test_editing_or_adding_an_imported_module_changes_the_code_version(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    stage = tmp_path / "my_stage.py"
    stage.write_text("from pipeline.artifacts.cards import card\n\ndef run(ctx):\n    return card\n")

    def version():
        registry.code_version.cache_clear()
        return registry.code_version("my_stage")

    first = version()
    assert set(registry.import_closure("my_stage")) == {"my_stage", "pipeline", "pipeline.artifacts", "pipeline.artifacts.cards"}
    stage.write_text(stage.read_text() + "# a comment\n")
    second = version()
    stage.write_text(stage.read_text() + "\ndef later():\n    from pipeline.models import vocab_transfer\n")  # a lazy import
    third = version()
    assert len({first, second, third}) == 3
    assert "pipeline.models.vocab_transfer" in registry.import_closure("my_stage")


def _runtime_imports(path: Path, package: str) -> set[str]:
    """The modules `path` imports when it runs (at the top or in a function), not those imported for type
    checkers only (`if TYPE_CHECKING:`)."""
    import ast

    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


def test_pipeline_has_no_import_circle():
    """config asks the backbone registry which size sections exist; the backbones take their base class from
    config_base, not from config (they imported each other)."""
    modules = {}
    for path in (REPO / "pipeline").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {name: {m for m in _runtime_imports(path, name if path.name == "__init__.py" else name.rpartition(".")[0])
                    if m in modules and m != name} for name, path in modules.items()}
    done, path_now = set(), []

    def visit(name):
        assert name not in path_now, "import circle: " + " -> ".join(path_now[path_now.index(name):] + [name])
        if name not in done:
            path_now.append(name)
            for imported in sorted(graph[name]):
                visit(imported)
            path_now.pop()
            done.add(name)

    for name in sorted(graph):
        visit(name)

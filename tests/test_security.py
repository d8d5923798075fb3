"""Security checklist: safe loading only, archive members cannot escape, servers stay local."""
import ast
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipeline.data.download import _check_member
from pipeline.errors import DataError

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO / "pipeline").rglob("*.py")) + sorted((REPO / "flows").rglob("*.py"))


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            yield node


def test_every_torch_load_is_weights_only():
    seen = 0
    for path in SOURCES:
        for call in _calls(path):
            if isinstance(call.func, ast.Attribute) and call.func.attr == "load" and getattr(call.func.value, "id", "") == "torch":
                seen += 1
                flags = {kw.arg: kw.value for kw in call.keywords}
                assert isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True, \
                    f"{path.relative_to(REPO)}:{call.lineno}: torch.load without weights_only=True"
    assert seen >= 2  # artifacts and checkpoints


@pytest.mark.parametrize("module", ["pickle", "dill", "joblib", "cloudpickle"])
def test_nothing_unpickles(module):
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                 for a in (n.names if isinstance(n, ast.Import) else [ast.alias(n.module or "")])}
        assert "load_learner" not in path.read_text(), f"{path.relative_to(REPO)} uses fastai's pickled export"
        if path.name == "zoo.py" and module == "pickle":  # the model zoo's vocabulary: no-globals unpickler only
            used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and getattr(n.value, "id", "") == "pickle"}
            assert used <= {"Unpickler", "UnpicklingError"}, used
            continue
        assert module not in names, f"{path.relative_to(REPO)} imports {module}"


def test_pipeline_never_imports_prefect():
    for path in (REPO / "pipeline").rglob("*.py"):
        assert "import prefect" not in path.read_text() and "from prefect" not in path.read_text(), path


def _member(name: str, kind=tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


@pytest.mark.parametrize("member", [
    _member("../evil.txt"), _member("imdb/../../evil.txt"), _member("/etc/passwd"), _member("..\\evil.txt"),
    _member("\\abs\\evil.txt"), _member("C:/evil.txt"), _member("imdb/link", tarfile.SYMTYPE),
    _member("imdb/hard", tarfile.LNKTYPE), _member("imdb/fifo", tarfile.FIFOTYPE), _member("imdb/dev", tarfile.CHRTYPE),
], ids=lambda m: f"{m.name}-{m.type!r}")
def test_archive_member_that_escapes_is_refused(member):
    with pytest.raises(DataError, match="refusing"):
        _check_member(Path("x.tgz"), member)


@pytest.mark.parametrize("name", ["imdb/train/pos/1_10.txt", "imdb/", "wikitext-2/wiki..valid.tokens"])
def test_ordinary_members_pass(name):
    _check_member(Path("x.tgz"), _member(name, tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE))


def test_prefect_server_binds_localhost_by_default():
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_API_HOST"}
    code = ("import flows; from prefect.settings import get_current_settings;"
            "from prefect.server.api.server import SubprocessASGIServer;"
            "print(get_current_settings().server.api.host, SubprocessASGIServer(port=4321).address)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["127.0.0.1", "http://127.0.0.1:4321"]

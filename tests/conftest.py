"""Shared fixtures. Real data comes from $ULMFIT_DATA_DIR (CI: ../shared/data beside the repo)."""
import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("ULMFIT_DATA_DIR", str(REPO.parent / "shared" / "data"))
# Keep tests away from the user's caches and Prefect database.
_TMP = Path(tempfile.mkdtemp(prefix="ulmfit-tests-"))
os.environ["ULMFIT_CACHE_DIR"] = str(_TMP / "cache")
os.environ["PREFECT_HOME"] = str(_TMP / "prefect")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # scripts/test.sh runs one pytest worker per core (pytest-xdist): each worker and every process it
    # starts computes at one thread, so two workers never fight over both cores (two torch jobs at two
    # threads each on 2 cores slow each other several-fold).
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


def pytest_configure(config):
    """One Prefect server for the whole session, in PREFECT_API_URL before anything imports prefect:
    every `ulmfit run` the tests start (in-process or as a subprocess) talks to it instead of starting
    a temporary server of its own, about 4-10 s each on 2 cores (`ulmfit run --preset smoke`: 30.2 s
    alone, 19.6 s against a running server). Tests of the no-server path remove the variable from the
    environment they hand their subprocess. Never the user's server: the URL is always replaced."""
    if getattr(config.option, "numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the pytest-xdist controller runs no tests; each worker starts its own server
    from flows.servers import LocalServer, free_port

    home = _TMP / "prefect-server"
    home.mkdir(exist_ok=True)
    server = LocalServer(port=free_port(), home=str(home), log_path=home / "server.log").start()
    os.environ["PREFECT_API_URL"], os.environ["PREFECT_UI_URL"] = server.api_url, server.ui_url
    config.stash[_SERVER] = server


def pytest_unconfigure(config):
    server = config.stash.get(_SERVER, None)
    if server is not None:
        server.stop()  # the whole process group


_SERVER = pytest.StashKey()


def pytest_collection_modifyitems(config, items):
    """Modules with the most `slow` tests first, each module's tests in their own order. pytest-xdist's
    `--dist loadfile` (scripts/test.sh) hands whole modules to the workers in this order, so a long module
    no longer starts last while the other worker idles: test_work_pool.py, last by name, ran the final
    95 s of a 12 min 45 s suite alone."""
    slow = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    position = {path: i for i, path in enumerate(slow)}
    items.sort(key=lambda item: (-slow[item.path], position[item.path]))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Mark a test whose body failed, so fixtures (the browser) can save what they saw."""
    report = (yield).get_result()
    if report.when == "call" and report.failed:
        item.failed = True


@pytest.fixture(scope="session", autouse=True)
def prefect_logging_on_the_session_streams():
    """Prefect binds its console handler to sys.stderr when its logging is first set up. Done inside
    a test with capsys, that stream is closed after the test, and every later in-process flow fails
    in Prefect's logging (test_faults then test_locking did): set it up once, here."""
    from prefect.logging.configuration import setup_logging

    setup_logging()


@pytest.fixture(scope="module", autouse=True)
def module_cache_dir(tmp_path_factory):
    """A cache dir (token cache and stage store) per test module: a run that a module expects to
    train must not find its stages in the store because another module's run computed them."""
    session_dir = os.environ["ULMFIT_CACHE_DIR"]
    os.environ["ULMFIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield Path(os.environ["ULMFIT_CACHE_DIR"])
    finally:
        os.environ["ULMFIT_CACHE_DIR"] = session_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["ULMFIT_DATA_DIR"])
    if not (path / "imdb" / "train.parquet").exists():
        pytest.fail(f"real data not found in {path}: set ULMFIT_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def smoke_run_cache(tmp_path_factory) -> Path:
    """The cache dir (stage store and token cache) of the session's smoke run."""
    return tmp_path_factory.mktemp("smoke-run-cache")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, data_dir, smoke_run_cache):
    """One finished `ulmfit run --preset smoke`, trained once per session (with a cache dir of its own),
    for the tests that only read a run: predict, the notebooks, the 2-process run's reference. A test that needs to change a run or
    to see stages computed trains its own. Every stage folder must still match its manifest at the end."""
    from flows.cli import main
    from pipeline.artifacts.layout import stage_folders
    from pipeline.artifacts.stage_folder import verify_folder

    path = tmp_path_factory.mktemp("smoke-run") / "run"
    module_cache = os.environ["ULMFIT_CACHE_DIR"]
    os.environ["ULMFIT_CACHE_DIR"] = str(smoke_run_cache)
    try:
        assert main(["run", "--preset", "smoke", "--out", str(path)]) == 0
    finally:
        os.environ["ULMFIT_CACHE_DIR"] = module_cache
    yield path
    for folder in stage_folders(path).values():
        verify_folder(folder)  # raises if a reader wrote into the shared run


@pytest.fixture(scope="session")
def smoke_stages(smoke_run, smoke_run_cache):
    """copy_into(cache_dir): the session smoke run's stage store and token cache copied into a cache dir, so
    that a default smoke run there takes every stage from the store instead of training it (about 15 s of
    the suite per run). For tests about what a run does with stages it has, not about computing them.
    Copied, never hard-linked: tests damage, truncate and replace what they are given."""
    import shutil

    def copy_into(cache_dir) -> Path:
        for part in ("stages", "tokens"):
            shutil.copytree(smoke_run_cache / part, Path(cache_dir) / part, dirs_exist_ok=True)
        return Path(cache_dir)

    return copy_into


@pytest.fixture(scope="session")
def smoke_cfg():
    from pipeline.config import load_config

    return load_config("smoke")


# --- a real Prefect server and `ulmfit serve` against it (test_serve.py, test_browser.py) ----------

def _log_tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


@pytest.fixture(scope="session")
def prefect_server(pytestconfig):
    """The session's `prefect server start` (pytest_configure): a free loopback port, its own PREFECT_HOME."""
    return pytestconfig.stash[_SERVER]


@pytest.fixture(scope="session")
def served(prefect_server, tmp_path_factory):
    """`ulmfit serve` pointed at the test server, until its deployments are registered; "deployment" is
    `ulmfit/smoke`, the one most tests run."""
    import subprocess
    import sys
    import time

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.servers import stop_process_group

    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "PREFECT_API_URL": prefect_server.api_url, "PREFECT_UI_URL": prefect_server.ui_url,
           "PREFECT_HOME": prefect_server.home, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve"], env=env, cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
            from prefect import get_client

            with get_client(sync_client=True) as client:
                while True:  # bounded by pytest-timeout; fails at once if `ulmfit serve` exits
                    assert proc.poll() is None, f"ulmfit serve exited:\n{_log_tail(log_path)}"
                    try:  # one deployment per flow and preset, all registered at once
                        deployments = {name: client.read_deployment_by_name(name)
                                       for name in ("ulmfit/smoke", "ulmfit/cpu", "compare/smoke")}
                        break
                    except Exception:
                        time.sleep(1)
            yield {"proc": proc, "deployment": deployments["ulmfit/smoke"], "deployments": deployments,
                   "log": log_path, "server": prefect_server}
    finally:
        stop_process_group(proc, grace=5.0)  # its runs are over; a 20 s grace for SIGINT was most of its teardown


# --- real small and read-only filesystems (disk full, read-only --out) -----------------------------

@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount_tmpfs(name, options) -> (tmp_path/name, mounted): a fresh tmpfs mounted there (options e.g.
    "size=1200k" or "ro"), or a plain folder and False where this process may not mount (not root, or no
    CAP_SYS_ADMIN in a container). Callers emulate the filesystem then, through the same code under test."""
    import subprocess

    mounted = []

    def mount(name: str, options: str) -> tuple[Path, bool]:
        target = tmp_path / name
        target.mkdir()
        if os.geteuid() != 0:
            return target, False
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        if done.returncode == 0:
            mounted.append(target)
        return target, done.returncode == 0

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


class NoSpaceFile:
    """A binary file whose writes fail with ENOSPC once `budget` bytes are written: a full disk as a
    Python file object meets it (torch's writer then raises its own RuntimeError around it)."""

    def __init__(self, path, budget: int = 0):
        self._fh, self._left = open(path, "wb"), budget

    def write(self, data) -> int:
        import errno

        if len(data) > self._left:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._left -= len(data)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


@pytest.fixture
def full_disk(mount_tmpfs, monkeypatch):
    """full_disk(size) -> a folder on a real tmpfs of that size; without mount rights, a plain folder
    where every torch.save of the pipeline (pipeline.artifacts.stage_folder.save_torch) meets ENOSPC at once."""
    from pipeline.artifacts import stage_folder

    def make(size: str = "1200k") -> Path:
        folder, real = mount_tmpfs("small-disk", f"size={size}")
        if not real:
            monkeypatch.setattr(stage_folder, "open", lambda path, mode="r", *a, **k:
                                NoSpaceFile(path) if "w" in mode else open(path, mode, *a, **k), raising=False)
        return folder

    return make

"""The run-directory lock, against a real second process holding it."""
import signal
import subprocess
import sys
import textwrap

import pytest

from pipeline.artifacts.locking import run_dir_lock
from pipeline.errors import RunDirError, RunLockedError

HOLDER = textwrap.dedent("""
    import sys, time
    from pipeline.artifacts.locking import run_dir_lock
    with run_dir_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(600)
""")


@pytest.fixture
def holder(tmp_path):
    """A separate process that holds the lock on tmp_path/run until killed."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield run_dir, proc
    proc.kill()
    proc.wait()


def test_second_run_on_same_dir_fails_fast_naming_the_holder(holder):
    run_dir, proc = holder
    with pytest.raises(RunLockedError) as err:
        with run_dir_lock(run_dir):
            pass
    message = str(err.value)
    assert f"pid {proc.pid}" in message and str(run_dir) in message and "\n" not in message


def test_other_run_dirs_are_not_blocked(holder, tmp_path):
    with run_dir_lock(tmp_path / "other") as lock:
        assert lock.exists()


def test_lock_of_a_killed_process_does_not_block(holder):
    run_dir, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run_dir / ".lock").exists()  # the stale file is still there ...
    with run_dir_lock(run_dir):  # ... but the kernel released the lock with the process
        pass


def test_lock_is_released_after_use(tmp_path):
    with run_dir_lock(tmp_path / "r"):
        pass
    with run_dir_lock(tmp_path / "r"):
        pass


def test_cli_run_on_a_locked_dir_exits_2(holder, capsys):
    from flows.cli import main

    run_dir, proc = holder
    assert main(["run", "--preset", "smoke", "--out", str(run_dir)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ulmfit: error:")]
    assert len(errors) == 1 and f"pid {proc.pid}" in errors[0] and "in use" in errors[0]
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # no stage was started


# --- the lock file is never a way to overwrite someone else's file (issue 11) ----------------------

def test_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path):
    important = tmp_path / "important"
    important.write_text("keep me")
    run_dir = tmp_path / "lk"
    run_dir.mkdir()
    (run_dir / ".lock").symlink_to(important)
    with pytest.raises(RunDirError, match="symbolic link"):
        with run_dir_lock(run_dir):
            pass
    assert important.read_text() == "keep me"


def test_dangling_lock_symlink_creates_nothing(tmp_path):
    run_dir = tmp_path / "lk"
    run_dir.mkdir()
    (run_dir / ".lock").symlink_to(tmp_path / "created-through-the-link")
    with pytest.raises(RunDirError, match="symbolic link"):
        with run_dir_lock(run_dir):
            pass
    assert not (tmp_path / "created-through-the-link").exists()


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_lock_path_that_is_not_a_regular_file_is_refused(tmp_path, kind):
    import os

    run_dir = tmp_path / "lk"
    run_dir.mkdir()
    (run_dir / ".lock").mkdir() if kind == "folder" else os.mkfifo(run_dir / ".lock")
    with pytest.raises(RunDirError, match="not a regular file|cannot open"):
        with run_dir_lock(run_dir):
            pass


def test_someone_elses_lock_file_is_not_truncated(tmp_path):
    """`--out ~` where ~/.lock belongs to another program: refused, its content kept."""
    (tmp_path / ".lock").write_text("another program's lock\n")
    with pytest.raises(RunDirError, match="not a ulmfit lock file"):
        with run_dir_lock(tmp_path):
            pass
    assert (tmp_path / ".lock").read_text() == "another program's lock\n"


def test_run_dir_that_is_a_file_is_one_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a folder"):
        with run_dir_lock(tmp_path / "afile"):
            pass
    assert (tmp_path / "afile").read_text() == "x"

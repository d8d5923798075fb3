"""One ulmfit run per run directory at a time: an OS lock (flock) on `<run_dir>/.lock`; and one
computation per stage key at a time (`waiting_lock`, used by `pipeline.artifacts.store`).

The lock belongs to the open file, so the kernel releases it when the process dies, even by
`kill -9`: a lock file left behind by a killed run never blocks the next one. The file holds
the holder's pid and start time, only to name them in the error message; it is never deleted
(deleting a lock file while others may have it open lets two processes each lock a different
file). It is opened with O_NOFOLLOW and must be a regular file that is empty or ours: a link or
someone else's `.lock` (say `--out ~`) is refused, never truncated.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import time
from pathlib import Path
from typing import Callable, Iterator

from pipeline.errors import RunDirError, RunLockedError

LOCK_NAME = ".lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"pid {info['pid']}, started {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold the run directory's lock for the duration; raise RunLockedError at once if taken."""
    run_dir = Path(run_dir)
    make_run_dir(run_dir)
    path = run_dir / LOCK_NAME
    fd = _open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(f"{run_dir} is in use by another ulmfit run ({_holder(path)}); wait for it "
                                 "to finish or choose another --out") from None
        if not _is_ours(os.pread(fd, 4096, 0)):
            raise RunDirError(f"{path}: exists and is not a ulmfit lock file; not overwriting it: move it away "
                              "or choose another --out")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "started": time.time()}).encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def waiting_lock(path: Path, on_wait: Callable[[str], None]) -> Iterator[bool]:
    """Hold the lock on `path`, waiting for another holder if there is one (`on_wait` gets its pid
    and start time first). Yields False, holding nothing, where the lock file cannot be made (a
    read-only cache): the caller then goes on unlocked rather than failing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_lock_file(path)
    except (OSError, RunDirError):
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait(_holder(path))
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "started": time.time()}).encode(), 0)
        yield True
    finally:
        os.close(fd)


def make_run_dir(run_dir: Path) -> None:
    """Create the run directory, or say in one line why it cannot be one."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except FileExistsError:
        raise RunDirError(f"{run_dir}: exists and is a file, not a folder; choose another --out") from None
    except OSError as err:
        raise RunDirError(f"{run_dir}: cannot be used as the run directory ({err.strerror or err})") from None


def _open_lock_file(path: Path) -> int:
    """Open (or create) the lock file itself: never through a symbolic link, never anything but a
    regular file, so a planted `.lock -> ~/important` cannot make the run truncate another file."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RunDirError(f"{path}: is a symbolic link; ulmfit never writes through one: remove it") from None
        raise RunDirError(f"{path}: cannot open the run directory's lock file ({err.strerror or err})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunDirError(f"{path}: is not a regular file; remove it or choose another --out")
    return fd


def _is_ours(content: bytes) -> bool:
    """An empty file, or one holding what this module writes ({"pid": ..., "started": ...})."""
    if not content.strip():
        return True
    try:
        info = json.loads(content)
    except ValueError:
        return False
    return isinstance(info, dict) and set(info) == {"pid", "started"}

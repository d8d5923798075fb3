"""One ulmfit run per run directory at a time: an OS lock (flock) on `<run_dir>/.lock`.

The lock belongs to the open file, so the kernel releases it when the process dies, even by
`kill -9`: a lock file left behind by a killed run never blocks the next one. The file holds
the holder's pid and start time, only to name them in the error message; it is never deleted
(deleting a lock file while others may have it open lets two processes each lock a different
file).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Iterator

from pipeline.errors import RunLockedError

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
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(f"{run_dir} is in use by another ulmfit run ({_holder(path)}); wait for it "
                                 "to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "started": time.time()}).encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock

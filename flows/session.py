"""What `ulmfit run` and `ulmfit compare` need around a flow: an API server they own, clean stops,
and one line per user error.

- **Server.** Without PREFECT_API_URL a flow needs a temporary Prefect server. Prefect's own
  runs in the terminal's process group: Ctrl-C kills it first, and the flow then spends minutes
  retrying its state updates against a dead server; a SIGTERM to the run leaves it orphaned.
  `flows.servers.TemporaryServer` starts the same server in its own session (the terminal's Ctrl-C
  does not reach it) with the kernel's parent-death signal set (it goes when this process goes, even
  by `kill -9`), and stops it when the process exits.
- **Stops.** SIGTERM is raised as `Terminated` (a KeyboardInterrupt), so Ctrl-C and SIGTERM take
  the same path: the stage stops at once, checkpoints stay, the server is stopped, no process
  outlives the run.
- **A server that goes away.** `flows.watchdog` notices within seconds and stops the run with one
  line (status 75) instead of minutes of retries and tracebacks.
- **Quiet errors.** A user error inside a task is printed by the CLI as one `ulmfit: error:` line;
  Prefect's log of the same failure (a traceback of ~100 lines) is dropped from the console
  unless `-v` asks for it. Tracebacks of real bugs are always shown.
"""
from __future__ import annotations

import contextlib
import logging
import re
import signal
import threading
import urllib.request
from pathlib import Path
from typing import Iterator

from flows.servers import TemporaryServer
from pipeline.errors import UlmfitError


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so the run stops through the same clean path."""


_SERVER: TemporaryServer | None = None


def api_url() -> str:
    """PREFECT_API_URL when set (environment or Prefect profile); else the URL of this process's
    temporary server (started once)."""
    from prefect.settings import PREFECT_API_URL

    global _SERVER
    if PREFECT_API_URL.value():
        return _reachable(PREFECT_API_URL.value())
    if _SERVER is None or not _SERVER.alive():
        # not the "ulmfit" logger: Prefect ships that one to the API, which has no run yet
        logging.getLogger(__name__).info("starting a temporary Prefect server (set PREFECT_API_URL to use yours)")
        _SERVER = TemporaryServer().start()
    return _SERVER.api_url


class ApiUnreachable(UlmfitError):
    """PREFECT_API_URL names a server that does not answer."""


def _reachable(url: str) -> str:
    """`url` if its /health answers within a few seconds; else one clear error instead of Prefect's
    three chained tracebacks 12 s later."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=5) as resp:
            if resp.status == 200:
                return url
            reason = f"HTTP {resp.status}"
    except OSError as err:  # URLError, connection refused, timeout
        reason = str(getattr(err, "reason", err))
    raise ApiUnreachable(f"the Prefect API at PREFECT_API_URL={url} does not answer ({reason}); start that server "
                         "(`prefect server start`), point PREFECT_API_URL at a running one, or unset it to let "
                         "ulmfit start a temporary server")


# --- one line per user error -------------------------------------------------------------------

def _user_error_names() -> set[str]:
    names, todo = set(), [UlmfitError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


def _quiet_exception(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (UlmfitError, KeyboardInterrupt)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class QuietUserErrors(logging.Filter):
    """Drops Prefect's records of a failure the CLI reports in one line: a user error or an interrupt."""

    def __init__(self):
        super().__init__()
        names = "|".join(sorted(_user_error_names()))
        self.state_line = re.compile(rf"Finished in state (Failed|Crashed)\(.*\b({names})\b"
                                     r"|aborted by an? (interrupt|termination) signal")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _quiet_exception(record.exc_info[1]):
            return False
        return not (record.name.startswith("prefect") and self.state_line.search(record.getMessage()))


@contextlib.contextmanager
def quiet_user_errors(verbose: bool) -> Iterator[None]:
    """Within the block, the console shows no traceback of a user error (unless verbose)."""
    if verbose:
        yield
        return
    quiet = QuietUserErrors()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


# --- the whole session --------------------------------------------------------------------------

def _raise_terminated(*_args) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def flow_session(verbose: bool = False) -> Iterator[None]:
    """Around a flow run from the CLI: SIGTERM as an interrupt, quiet user errors, an API we own."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.watchdog import watching

    with sigterm_as_interrupt(), quiet_user_errors(verbose):
        url = api_url()
        with temporary_settings(updates={PREFECT_API_URL: url}), watching(url):
            yield


def interrupted_message(stop: KeyboardInterrupt, run_dir: Path) -> tuple[str, int]:
    """The line to print and the exit status (130 for Ctrl-C, 143 for SIGTERM, 75 when the Prefect
    API went away) after an interrupt."""
    from flows.watchdog import EXIT_STATUS, ServerLost, lost_message

    found = [*run_dir.glob("*.partial"), *run_dir.glob("*/*.partial")] if run_dir.is_dir() else []  # run, compare
    partial = sorted(p for p in found if p.is_dir())
    where = f"; checkpoints of the interrupted stage: {', '.join(map(str, partial))}" if partial else ""
    if isinstance(stop, ServerLost):
        return lost_message(stop.url) + where, EXIT_STATUS
    what = "terminated" if isinstance(stop, Terminated) else "interrupted"
    return (f"ulmfit: {what}: run the same command again to resume (finished stages are cached, an unfinished "
            f"stage continues from its last finished epoch){where}"), (143 if isinstance(stop, Terminated) else 130)

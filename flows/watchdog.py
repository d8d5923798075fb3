"""Notice within seconds that the Prefect API a run reports to has gone away.

Without this, a run whose server dies (the temporary one killed, the user's restarted) trains on
for minutes while Prefect retries every log and state update, then fails with several chained
tracebacks. `ApiWatchdog` asks the API's /health every POLL_SECONDS; after MISSES answers in a row
fail, it raises `ServerLost` in the main thread (through SIGUSR1, so a blocking call is interrupted
too). That unwinds like Ctrl-C: the stage stops, its checkpoints of finished epochs stay, and the
CLI prints one line saying how to resume. Prefect's engine then tries to report the crash to the
dead API, which can retry for minutes (its console logs are silenced from then on): if the process is still there GRACE_SECONDS later, the
watchdog prints the same line and ends it (every file the tool writes is written atomically, and
the kernel releases the run's locks).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Iterator

from flows.servers import is_healthy  # /health within 5 s: generous, a busy 2-core machine answers slowly

POLL_SECONDS = 2.0
MISSES = 3
GRACE_SECONDS = 8.0
EXIT_STATUS = 75  # EX_TEMPFAIL: nothing is wrong with the run; try again once the server is back


class ServerLost(KeyboardInterrupt):
    """The Prefect API stopped answering during a run (delivered like Ctrl-C)."""

    def __init__(self, url: str):
        super().__init__(url)
        self.url = url


def lost_message(url: str) -> str:
    return (f"ulmfit: error: the Prefect API at {url} stopped answering during the run, so the run stopped; "
            "finished stages are kept: start the server again (or leave PREFECT_API_URL unset for a temporary "
            "one) and run the same command to resume")



class ApiWatchdog(threading.Thread):
    def __init__(self, url: str, poll: float = POLL_SECONDS, misses: int = MISSES, grace: float = GRACE_SECONDS):
        super().__init__(name="ulmfit-api-watchdog", daemon=True)
        self.url, self.poll, self.misses, self.grace = url, poll, misses, grace
        self.stopped = threading.Event()

    def run(self) -> None:
        missed = 0
        while not self.stopped.wait(self.poll):
            missed = 0 if is_healthy(self.url.rstrip("/")) else missed + 1
            if missed >= self.misses:
                os.kill(os.getpid(), signal.SIGUSR1)  # the handler raises ServerLost in the main thread
                if not self.stopped.wait(self.grace):  # still stuck in Prefect's retries
                    print(lost_message(self.url), file=sys.stderr, flush=True)
                    os._exit(EXIT_STATUS)
                return


def _silence_prefect() -> None:
    """Prefect's workers would print each failed retry against the dead API: the one line says it all."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("prefect"):
            logging.getLogger(name).disabled = True


@contextlib.contextmanager
def watching(url: str) -> Iterator[None]:
    """Within the block, the API at `url` going away raises ServerLost (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def lost(*_args) -> None:
        _silence_prefect()
        raise ServerLost(url)

    previous = signal.signal(signal.SIGUSR1, lost)
    watchdog = ApiWatchdog(url)
    watchdog.start()
    try:
        yield
    finally:
        watchdog.stopped.set()
        signal.signal(signal.SIGUSR1, previous)

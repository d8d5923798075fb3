"""Prefect API servers this project starts, and the plumbing they share (a free port, the health check, one
start-up timeout, stopping a whole process group).

- `TemporaryServer`: what `ulmfit run` and `ulmfit compare` start when PREFECT_API_URL is unset. Prefect's
  ephemeral API app (uvicorn, no UI) in its own session, so the terminal's Ctrl-C does not reach it, with
  the kernel's parent-death signal set: it goes when the run goes, even by `kill -9` (flows/session.py).
- `LocalServer`: `prefect server start` with the UI, for `ulmfit serve` (flows/serve.py) and the tests.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UlmfitError

# A cold start on a busy 2-core machine takes 10-30 s; Prefect's own setting for its ephemeral server is honoured.
START_TIMEOUT = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"))
PR_SET_PDEATHSIG = 1


class ServeError(UlmfitError):
    """The server could not be started or reached."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def is_healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def stop_process_group(proc: subprocess.Popen | None, grace: float = 20.0,
                       signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
    """Send each signal to the process's whole group (uvicorn workers included) and wait up to `grace`
    seconds for it to exit; SIGKILL last."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in [*((s, grace) for s in signals), (signal.SIGKILL, 5.0)]:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _new_log_path(prefix: str) -> Path:
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".log")
    os.close(fd)
    return Path(path)


@dataclass
class _Server:
    """A server subprocess on a loopback port, started in its own session, healthy or an error."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: a free one
    proc: subprocess.Popen | None = None
    log_path: Path = field(default_factory=lambda: _new_log_path("prefect-server-"))

    def __post_init__(self):
        self.port = self.port or free_port(self.host)

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, cmd: list[str], env: dict, timeout: float, **popen) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, **popen)
        try:
            deadline = time.monotonic() + timeout
            while not is_healthy(self.api_url):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise self._failed(self.log_path.read_text(errors="replace")[-2000:])
                time.sleep(0.2)
        except BaseException:  # includes Ctrl-C while starting
            self.stop()
            raise

    def _failed(self, log_tail: str) -> UlmfitError:
        return ServeError(f"the Prefect server on {self.api_url} did not start (log {self.log_path}):\n{log_tail}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process_group(proc)


@dataclass
class LocalServer(_Server):
    """`prefect server start` (API and UI)."""

    port: int = 4200
    home: str | None = None  # PREFECT_HOME for the server (its SQLite database); None = inherited

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict:
        env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               # the UI in the browser must call this port, not the default 4200
               "PREFECT_UI_API_URL": self.api_url, "PREFECT_UI_URL": self.ui_url}
        env.pop("PREFECT_API_URL", None)
        if self.home:
            env["PREFECT_HOME"] = self.home
        return env

    def start(self, timeout: float = START_TIMEOUT) -> "LocalServer":
        if port_in_use(self.host, self.port):
            raise ServeError(f"port {self.port} on {self.host} is already in use; pass --port, "
                             "or set PREFECT_API_URL to use the server that is running there")
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", self.host, "--port", str(self.port)]
        self._spawn(cmd, self.env(), timeout)
        return self


@dataclass
class TemporaryServer(_Server):
    """Prefect's ephemeral API server (uvicorn, no UI), owned by this process: stopped when it exits, and
    killed by the kernel if it dies. Its log is kept only when it failed to start."""

    log_path: Path = field(default_factory=lambda: _new_log_path("ulmfit-prefect-server-"))
    keep_log: bool = False

    def start(self, timeout: float = START_TIMEOUT) -> "TemporaryServer":
        import atexit

        import prefect
        from prefect.settings import get_current_settings

        env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
               "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
               "prefect.server.api.server:create_app", "--host", self.host, "--port", str(self.port),
               "--log-level", "error", "--lifespan", "on"]
        atexit.register(self.stop)
        self._spawn(cmd, env, timeout, preexec_fn=_die_with_parent)
        return self

    def _failed(self, log_tail: str) -> UlmfitError:
        self.keep_log = True
        return UlmfitError(f"the temporary Prefect server did not start (log {self.log_path}): {log_tail[-1500:]!r}")

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 5 s: at exit there is no time for a graceful
        SIGINT (nothing of it is worth keeping)."""
        proc, self.proc = self.proc, None
        if not self.keep_log:
            self.log_path.unlink(missing_ok=True)
        stop_process_group(proc, grace=5.0, signals=(signal.SIGTERM,))

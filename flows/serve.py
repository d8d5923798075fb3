"""`ulmfit serve`: the Prefect UI with the project's flows as deployments you can run from the browser.

Without PREFECT_API_URL a local Prefect server is started on 127.0.0.1 (its SQLite database lives
under PREFECT_HOME, default ~/.prefect); with it, the flows are served against that server. The
served flows run in subprocesses of this process. Ctrl-C stops serving and the server it started.
"""
from __future__ import annotations

import importlib
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

import flows  # noqa: F401  (Prefect defaults before prefect is imported)
from pipeline.errors import UlmfitError

# (deployment name, module, flow object); imported only when serving (they pull in fastai).
SERVED_FLOWS = [
    ("ulmfit", "flows.ulmfit_flow", "ulmfit_flow"),
    ("compare", "flows.compare_flow", "compare_flow"),
]
SERVER_START_TIMEOUT = 180.0  # seconds; a cold start on a busy 2-core machine takes 10-30 s


class ServeError(UlmfitError):
    """The server could not be started or reached."""


def served_flows() -> list[tuple[str, object]]:
    """(deployment name, flow) for each flow in SERVED_FLOWS."""
    return [(name, getattr(importlib.import_module(module), attr)) for name, module, attr in SERVED_FLOWS]


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


def _new_log_path() -> Path:
    fd, path = tempfile.mkstemp(prefix="prefect-server-", suffix=".log")
    os.close(fd)
    return Path(path)


@dataclass
class LocalServer:
    """A `prefect server start` subprocess on a loopback port."""

    host: str = "127.0.0.1"
    port: int = 4200
    home: str | None = None  # PREFECT_HOME for the server (its SQLite database); None = inherited
    proc: subprocess.Popen | None = None
    log_path: Path = field(default_factory=lambda: _new_log_path())

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

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

    def start(self, timeout: float = SERVER_START_TIMEOUT) -> "LocalServer":
        if port_in_use(self.host, self.port):
            raise ServeError(f"port {self.port} on {self.host} is already in use; pass --port, "
                             "or set PREFECT_API_URL to use the server that is running there")
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", self.host, "--port", str(self.port)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_healthy(timeout)
        except BaseException:  # includes Ctrl-C while starting
            self.stop()
            raise
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not is_healthy(self.api_url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise ServeError(f"the Prefect server on {self.ui_url} did not start "
                                 f"(log {self.log_path}):\n{tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Terminate the server's whole process group (uvicorn workers included)."""
        stop_process_group(self.proc)


def stop_process_group(proc: subprocess.Popen | None, grace: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def deployments(names: list[str] | None = None) -> list:
    """RunnerDeployments for the served flows, one per preset (`ulmfit/cpu`, `compare/smoke`, ...), whose
    forms open with the preset's values (flows/forms.py). Module-path entrypoints: no file paths baked in."""
    from pipeline.config import available_presets

    chosen = [(n, f) for n, f in served_flows() if names is None or n in names]
    if names and len(chosen) != len(names):
        known = ", ".join(n for n, _ in served_flows())
        raise ServeError(f"unknown flow in {names}; available: {known}")
    return [preset_deployment(f, preset) for _, f in chosen for preset in available_presets()]


def preset_deployment(flow, preset: str):
    from prefect.types.entrypoint import EntrypointType
    from prefect.utilities.annotations import freeze
    from prefect.utilities.callables import ParameterSchema

    from flows.forms import description, plain_schema

    values = importlib.import_module(flow.fn.__module__).form_values(preset)
    deployment = flow.to_deployment(name=preset, entrypoint_type=EntrypointType.MODULE_PATH,
                                    parameters={"preset": freeze(preset), **values},
                                    description=description(flow, preset))
    schema = plain_schema(deployment._parameter_openapi_schema.model_dump(), values)
    deployment._parameter_openapi_schema = ParameterSchema(**schema)
    return deployment


def deploy(pool: str, names: list[str] | None = None) -> int:
    """Register every served flow, one deployment per preset, with the work pool `pool` on the server
    at PREFECT_API_URL. A worker started with `prefect worker start --pool POOL` on the machine that
    should train (the package installed, ULMFIT_DATA_DIR set there) runs what the UI or the API starts."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        raise ServeError("ulmfit deploy registers deployments on a server that stays up: set PREFECT_API_URL "
                         "(e.g. http://HOST:4200/api, a `prefect server start` or `ulmfit serve`)")
    if not is_healthy(api_url):
        raise ServeError(f"PREFECT_API_URL={api_url} does not answer on /health; start that server first")
    with get_client(sync_client=True) as client:
        try:
            kind = client.read_work_pool(pool).type
        except ObjectNotFound:
            raise ServeError(f"work pool {pool!r} does not exist on {api_url}; create it: "
                             f"prefect work-pool create {pool} --type process") from None
    for deployment in deployments(names):
        deployment.apply(work_pool_name=pool)
        print(f"deployed {deployment.flow_name}/{deployment.name} to work pool {pool} ({kind})", flush=True)
    print(f"Start a worker where the runs should execute: prefect worker start --pool {pool}", flush=True)
    return 0


def _raise_interrupt(*_args):
    raise KeyboardInterrupt


def serve(host: str = "127.0.0.1", port: int = 4200, limit: int | None = None,
          names: list[str] | None = None) -> int:
    """Serve the flows until Ctrl-C; start a local server first unless PREFECT_API_URL is set."""
    server = None
    api_url = os.environ.get("PREFECT_API_URL")
    if api_url:
        if not is_healthy(api_url):
            raise ServeError(f"PREFECT_API_URL={api_url} does not answer on /health; start that server "
                             "or unset PREFECT_API_URL to let `ulmfit serve` start one")
        ui_url = os.environ.get("PREFECT_UI_URL") or api_url.removesuffix("/api")
    else:
        server = LocalServer(host=host, port=port or free_port(host))
        print(f"Starting a Prefect server on {server.ui_url} (database under "
              f"{os.environ.get('PREFECT_HOME', '~/.prefect')}) ...", flush=True)
        server.start()
        api_url, ui_url = server.api_url, server.ui_url
    os.environ["PREFECT_API_URL"] = api_url  # the flow-run subprocesses inherit it
    os.environ["PREFECT_UI_URL"] = ui_url
    # SIGTERM (e.g. from a supervisor) stops as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        from prefect import serve as prefect_serve
        from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api_url, PREFECT_UI_URL: ui_url}):
            served = deployments(names)
            print(f"Prefect UI: {ui_url}", flush=True)
            for dep in served:
                print(f"  serving {dep.flow_name}/{dep.name}: {ui_url}/deployments  "
                      f"(CLI: prefect deployment run '{dep.flow_name}/{dep.name}')", flush=True)
            print("Press Ctrl-C to stop.", flush=True)
            prefect_serve(*served, limit=limit, print_starting_message=False)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            print("Stopping the Prefect server ...", flush=True)
            server.stop()
    print("ulmfit serve: stopped.", flush=True)
    return 0

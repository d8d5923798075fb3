"""`ulmfit serve`: the Prefect UI with the project's flows as deployments you can run from the browser.

Without PREFECT_API_URL a local Prefect server is started on 127.0.0.1 (its SQLite database lives
under PREFECT_HOME, default ~/.prefect); with it, the flows are served against that server. The
served flows run in subprocesses of this process. Ctrl-C stops serving and the server it started.
"""
from __future__ import annotations

import importlib
import os
import signal

import flows  # noqa: F401  (Prefect defaults before prefect is imported)
from flows.servers import LocalServer, ServeError, free_port, is_healthy  # noqa: F401  (serve's API)

# (deployment name, module, flow object); imported only when serving (they pull in fastai).
SERVED_FLOWS = [
    ("ulmfit", "flows.ulmfit_flow", "ulmfit_flow"),
    ("compare", "flows.compare_flow", "compare_flow"),
]


def served_flows() -> list[tuple[str, object]]:
    """(deployment name, flow) for each flow in SERVED_FLOWS."""
    return [(name, getattr(importlib.import_module(module), attr)) for name, module, attr in SERVED_FLOWS]


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

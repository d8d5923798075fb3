"""The engine beyond one machine (issue 24): `ulmfit deploy --pool` registers the flows with a Prefect
process work pool, and a real worker runs them. A server of its own (the session's `served` one keeps
its own deployments of the same names), `prefect work-pool create`, `ulmfit deploy`, `prefect worker
start`, runs created through the API as the UI's Run button does. The pool's concurrency limit of 1
makes a second run wait; after `kill -9` of the worker mid-run, a new worker's run of the same
deployment resumes the stage from its checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
POOL = "trainers"


@pytest.fixture()
def pool_env(tmp_path, data_dir, smoke_stages):
    from flows.servers import LocalServer, free_port

    smoke_stages(tmp_path / "cache")  # the first run's stages; the runs under test train stage 2 and on
    server = LocalServer(port=free_port(), home=str(tmp_path / "home"), log_path=tmp_path / "server.log").start()
    env = {**os.environ, "PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(tmp_path / "home"),
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "0", "OMP_NUM_THREADS": "1",
           "ULMFIT_DATA_DIR": str(data_dir), "ULMFIT_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    workers: list[subprocess.Popen] = []

    def worker() -> subprocess.Popen:
        log = open(tmp_path / f"worker{len(workers)}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL], env=env,
                                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        workers.append(proc)
        return proc

    try:
        yield {"server": server, "env": env, "worker": worker}
    finally:
        for proc in workers:
            _kill_tree(proc.pid)
        server.stop()


def _kill_tree(pid: int) -> None:
    """kill -9 a worker and the flow-run processes it started."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def _cli(args: list, env: dict) -> str:
    proc = subprocess.run([sys.executable, *map(str, args)], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def _wait(client, run_id, until, timeout: float = 600.0):
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(run_id)
        if until(run):
            return run
        assert time.monotonic() < deadline, f"run {run.name}: {run.state}"
        time.sleep(0.5)


def _final(run) -> bool:
    return run.state is not None and run.state.is_final()


@pytest.mark.slow
def test_a_work_pool_worker_runs_the_deployed_flows(pool_env, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Crashed

    env = pool_env["env"]
    _cli(["-m", "prefect", "work-pool", "create", POOL, "--type", "process"], env)
    _cli(["-m", "prefect", "work-pool", "set-concurrency-limit", POOL, "1"], env)
    out = _cli(["-m", "flows.cli", "deploy", "--pool", POOL], env)
    assert f"deployed ulmfit/smoke to work pool {POOL} (process)" in out and "compare/cpu" in out
    worker = pool_env["worker"]()

    with temporary_settings(updates={PREFECT_API_URL: pool_env["server"].api_url}):
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("ulmfit/smoke")
            assert deployment.work_pool_name == POOL
            first = client.create_flow_run_from_deployment(deployment.id, parameters={"out_dir": str(tmp_path / "a")})
            long = {"out_dir": str(tmp_path / "b"), "adapt": {"epochs": 6}}  # killed at its first checkpoint: 5 epochs left to resume
            second = client.create_flow_run_from_deployment(deployment.id, parameters=long)

            # The pool runs one flow at a time: while the first runs, the second waits.
            _wait(client, first.id, lambda r: r.state.is_running() or _final(r))
            while not _final(client.read_flow_run(first.id)):
                assert not client.read_flow_run(second.id).state.is_running(), "the concurrency limit was ignored"
                time.sleep(0.5)
            first = client.read_flow_run(first.id)
            assert first.state.name == "Completed", first.state
            assert (tmp_path / "a" / "classify" / "manifest.json").is_file()

            # kill -9 of the worker (and its flow-run process) once stage 2 has checkpointed an epoch.
            checkpoints = tmp_path / "b" / "adapt.partial"
            deadline = time.monotonic() + 600
            while not any(checkpoints.glob("*.pt")):
                assert time.monotonic() < deadline and not _final(client.read_flow_run(second.id))
                time.sleep(0.2)
            _kill_tree(worker.pid)
            # Nobody is left to report the crash: the operator (or Prefect's zombie detection) marks it,
            # which frees the pool's one slot.
            client.set_flow_run_state(second.id, Crashed(message="worker killed"), force=True)

            pool_env["worker"]()
            third = client.create_flow_run_from_deployment(deployment.id, parameters=long)
            third = _wait(client, third.id, _final)
            assert third.state.name == "Completed", third.state
            assert (tmp_path / "b" / "classify" / "manifest.json").is_file()
            for _ in range(60):  # log lines are shipped in batches: they can land after the final state
                logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[third.id])))
                resumed = [e.message for e in logs if "resuming from checkpoint" in e.message]
                if resumed:
                    break
                time.sleep(1)
            assert resumed, [e.message for e in logs]

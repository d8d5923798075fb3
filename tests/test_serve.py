"""A real Prefect server, `ulmfit serve`, and runs started through the API the way the UI's Run button does."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

STAGES = ("pretrain", "adapt", "classify")
# The served process outlives this module (test_browser shares it), and with it its stage store:
# the run that must train has a seed of its own, so no other test's run makes its stages Cached.
SEED = 101


@pytest.fixture()
def client(served):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: served["server"].api_url}):
        with get_client(sync_client=True) as c:
            yield c


def run_deployment_and_wait(client, served, parameters: dict):
    """create_flow_run_from_deployment (the UI's Run button), then wait for a final state."""
    run = client.create_flow_run_from_deployment(served["deployment"].id, parameters=parameters)
    while True:  # bounded by pytest-timeout; fails at once if the serving process dies
        run = client.read_flow_run(run.id)
        if run.state is not None and run.state.is_final():
            return run
        assert served["proc"].poll() is None, f"ulmfit serve exited:\n{_log_tail(served['log'])}"
        time.sleep(1)


def task_states(client, flow_run_id) -> dict:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.split("-")[0]: r.state.name for r in runs if r.name.split("-")[0] in STAGES}


def artifacts(client, flow_run_id) -> dict:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in found}


def test_deployment_has_typed_parameters(served):
    schema = served["deployment"].parameter_openapi_schema
    props = schema["properties"]
    assert props["preset"]["enum"] == ["smoke"] and props["preset"]["readOnly"]  # ulmfit/smoke: one preset
    assert props["backbone"]["enum"] == ["awd_lstm", "gpt", "bert"]  # from the registry, a plain dropdown
    assert props["rerun"]["anyOf"][0]["enum"] == list(STAGES)  # no value in a preset: stays optional
    for stage in STAGES:  # nested forms with typed fields, not a JSON blob
        ref = props[stage].get("$ref") or props[stage]["allOf"][0]["$ref"]
        assert schema["definitions"][ref.split("/")[-1]]["properties"]
    assert "n_labels" in schema["definitions"]["ClassifySettings"]["properties"]


@pytest.mark.parametrize("name", ["ulmfit/smoke", "ulmfit/cpu"])
def test_each_preset_deployment_opens_with_the_preset_values(served, name):
    """Issue 25: the form's fields are plain typed fields holding what the run will use, read from the
    preset (not None toggles)."""
    from pipeline.config import load_config

    deployment = served["deployments"][name]
    cfg = load_config(name.split("/")[1])
    classify = deployment.parameter_openapi_schema["definitions"]["ClassifySettings"]["properties"]
    assert classify["n_labels"]["type"] == "integer" and "anyOf" not in classify["n_labels"]
    assert classify["n_labels"]["default"] == cfg.classify.n_labels
    assert deployment.parameters["classify"]["n_labels"] == cfg.classify.n_labels
    assert deployment.parameters["classify"]["epochs_per_phase"] == list(cfg.classify.epochs_per_phase)
    assert deployment.parameters["pretrain"]["max_vocab"] == cfg.pretrain.max_vocab
    assert deployment.parameters["backbone"] == cfg.model.backbone
    assert f"Preset `{name.split('/')[1]}`" in deployment.description


def test_compare_deployment_opens_with_the_preset_label_budget(served):
    from pipeline.config import load_config

    deployment = served["deployments"]["compare/smoke"]
    assert deployment.parameters["n_labels"] == [load_config("smoke").classify.n_labels]
    assert deployment.parameter_openapi_schema["properties"]["n_labels"]["type"] == "array"


@pytest.fixture(scope="module")
def ui_run(served, tmp_path_factory):
    """One run of ulmfit/smoke from the API (the UI's Run button), that the tests below read and rerun."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    out = tmp_path_factory.mktemp("ui") / "ui-run"
    params = {"preset": "smoke", "backbone": "awd_lstm", "out_dir": str(out), "classify": {"n_test": 40},
              "overrides": [f"seed={SEED}"]}
    with temporary_settings(updates={PREFECT_API_URL: served["server"].api_url}):
        with get_client(sync_client=True) as client:
            run = run_deployment_and_wait(client, served, params)
    assert run.state.name == "Completed", f"{run.state}\n{_log_tail(served['log'])}"
    return run, params, out


def test_run_from_deployment_completes_with_artifacts(ui_run, client):
    run, _, out = ui_run
    assert task_states(client, run.id) == dict.fromkeys(STAGES, "Completed")

    found = artifacts(client, run.id)
    for stage in STAGES:
        assert {f"{stage}-metrics", f"{stage}-card", f"{stage}-progress"} <= set(found), sorted(found)
        assert (out / stage / "manifest.json").is_file() and (out / stage / "history.png").is_file()
        assert str(out / stage / "history.png") in found[f"{stage}-card"].data
    metrics = {row["metric"]: row["value"] for row in _table(found["classify-metrics"].data)}
    assert metrics["test_size"] == 40  # the typed classify setting reached the config
    assert "Confusion matrix" in found["classify-card"].data
    assert "## Samples" in found["adapt-card"].data
    assert all(found[f"{s}-progress"].data == 100.0 for s in STAGES)


def test_epoch_lines_reach_the_run_logs(ui_run, client):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    run = ui_run[0]
    wanted = [re.compile(r"^pretrain epoch 1/1: train_loss"), re.compile(r"^phase2 epoch 1/1: ")]
    # Log lines are shipped in batches and can land after the run is marked Completed: re-read a while.
    for _ in range(60):
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        messages = [entry.message for entry in logs]
        if all(any(p.match(m) for m in messages) for p in wanted):
            break
        time.sleep(1)
    for pattern in wanted:
        assert any(pattern.match(m) for m in messages), (pattern.pattern, messages[:60])


def test_rerun_classify_from_the_api_keeps_upstream_cached(ui_run, served, client):
    _, params, _ = ui_run
    again = run_deployment_and_wait(client, served, {**params, "rerun": "classify"})
    assert again.state.name == "Completed"
    assert task_states(client, again.id) == {"pretrain": "Cached", "adapt": "Cached", "classify": "Completed"}
    assert {"pretrain-card", "adapt-card", "classify-card"} <= set(artifacts(client, again.id))


def test_invalid_parameters_are_rejected_by_the_server(served, client):
    from prefect.exceptions import PrefectHTTPStatusError

    with pytest.raises(PrefectHTTPStatusError):
        client.create_flow_run_from_deployment(served["deployment"].id, parameters={"preset": "huge"})
    with pytest.raises(PrefectHTTPStatusError):  # ulmfit/smoke runs the smoke preset only
        client.create_flow_run_from_deployment(served["deployment"].id, parameters={"preset": "cpu"})


def test_serve_starts_its_own_server_and_stops_on_ctrl_c(tmp_path):
    """Without PREFECT_API_URL, `ulmfit serve` starts a server, serves, and Ctrl-C stops both."""
    from flows.servers import free_port, is_healthy, stop_process_group

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "home")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--port", str(port)], env=env,
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_terminal_job)
    try:
        while "Press Ctrl-C" not in _log_tail(log_path):
            assert proc.poll() is None, _log_tail(log_path)
            time.sleep(0.5)
        assert f"Prefect UI: http://127.0.0.1:{port}" in _log_tail(log_path)
        assert is_healthy(f"http://127.0.0.1:{port}/api")
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        assert proc.wait(timeout=60) == 0, _log_tail(log_path)
        assert "ulmfit serve: stopped." in _log_tail(log_path)
        assert not is_healthy(f"http://127.0.0.1:{port}/api")
    finally:
        stop_process_group(proc)


def _terminal_job() -> None:
    """Ctrl-C as a terminal's job gets it. A shell starts background jobs (`nohup pytest ... &`) with SIGINT
    ignored, children inherit that, and `ulmfit serve` then never sees the Ctrl-C (this test hung once so)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _log_tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _table(data):
    import json

    return json.loads(data) if isinstance(data, str) else data

"""The Prefect UI in a real browser: open the deployment, submit a custom run with changed parameters,
watch it reach Completed, save screenshots (CI artifacts under artifacts/).

Needs Debian's chromium at /usr/bin/chromium (.ci/run installs it with apt-get) and the `playwright`
Python package; no browser is downloaded.
"""
import os
import re
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("ULMFIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("ULMFIT_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))
DOCS = Path(__file__).resolve().parents[1] / "docs"  # the form's screenshot in docs/ui.md

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} not found: install Debian's chromium (.ci/run does)")


@pytest.fixture()
def page(request):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            yield page
            if getattr(request.node, "failed", False):  # what the browser showed when it went wrong
                page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-failure.png"), full_page=True)
                (ARTIFACTS / f"{request.node.name}-failure.html").write_text(page.content())
        finally:
            browser.close()



def field(page, label: str, within=None):
    """A schema-form property by its label, e.g. 'out_dir' or 'N Test' (nested)."""
    scope = within or page
    return scope.locator(".schema-form-property").filter(
        has=page.locator(".schema-form-property__label", has_text=re.compile(rf"^{re.escape(label)}( \(Optional\))?$"))
    ).last


def fill(page, label: str, value: str, within=None) -> None:
    """Type into a plain field (a deployment's form opens with its preset's value there)."""
    field(page, label, within).locator("input, textarea").first.fill(value)


def open_custom_run(page, ui: str, deployment) -> None:
    page.goto(f"{ui}/deployments/deployment/{deployment.id}")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    page.wait_for_url(re.compile(r"/deployments/deployment/.+/run"))


def submitted_run(client, deployment_id, out_dir: str) -> str:
    """The id of the run the form created (other tests' runs of this deployment are in its list too)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    while True:  # bounded by pytest-timeout
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        mine = [r for r in runs if r.parameters.get("out_dir") == out_dir]
        if mine:
            return str(mine[0].id)
        time.sleep(0.5)


def test_each_preset_form_opens_with_its_values(served, page):
    """Issue 25: `ulmfit/cpu`'s Custom run form shows the preset's label budget in a plain number field."""
    from playwright.sync_api import expect

    from pipeline.config import load_config

    open_custom_run(page, served["server"].ui_url, served["deployments"]["ulmfit/cpu"])
    n_labels = field(page, "N Labels", within=field(page, "classify")).locator("input").first
    expect(n_labels).to_have_value(str(load_config("cpu").classify.n_labels))  # 1,000, read from the preset
    for folder in (ARTIFACTS, DOCS):
        page.screenshot(path=str(folder / "ui-custom-run-form.png"), full_page=True)


@pytest.mark.slow
def test_custom_run_from_the_ui(served, page, tmp_path):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipeline.artifacts.model_file import load_model_file
    from pipeline.config import load_config

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out_dir = tmp_path / "browser-run"

    open_custom_run(page, served["server"].ui_url, served["deployments"]["ulmfit/smoke"])
    fill(page, "out_dir", str(out_dir))
    fill(page, "N Test", "40", within=field(page, "classify"))  # one field changed; the rest is the preset's
    page.screenshot(path=str(ARTIFACTS / "ui-custom-run-smoke.png"), full_page=True)
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(r"/deployments/deployment/[0-9a-f-]{36}$"))  # back on the deployment page

    with temporary_settings(updates={PREFECT_API_URL: served["server"].api_url}):
        with get_client(sync_client=True) as client:
            run_id = submitted_run(client, served["deployments"]["ulmfit/smoke"].id, str(out_dir))
            page.goto(f"{served['server'].ui_url}/runs/flow-run/{run_id}")
            while True:  # bounded by pytest-timeout; fails at once if the serving process dies
                run = client.read_flow_run(run_id)
                if run.state is not None and run.state.is_final():
                    break
                assert served["proc"].poll() is None, "ulmfit serve exited"
                time.sleep(1)
    assert run.state.name == "Completed", run.state
    assert run.parameters["out_dir"] == str(out_dir) and run.parameters["preset"] == "smoke"
    assert run.parameters["classify"]["n_test"] == 40

    page.reload()
    page.locator(".state-badge", has_text="Completed").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "ui-run.png"), full_page=False)
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text("classify-card").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "ui-run-artifacts.png"), full_page=True)

    assert (out_dir / "classify" / "manifest.json").is_file()
    metrics = (out_dir / "classify" / "metrics.json").read_text()
    assert '"test_size": 40' in metrics
    classify = load_model_file(out_dir / "classify").config["classify"]
    smoke = load_config("smoke").classify
    assert classify["n_test"] == 40 and classify["n_labels"] == smoke.n_labels  # changed, and the preset's

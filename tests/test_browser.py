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


def fill_optional(page, label: str, kind: str, value: str, within=None) -> None:
    """Switch an Optional field from None to its type, then type the value."""
    prop = field(page, label, within)
    prop.get_by_role("button", name=kind, exact=True).first.click()
    prop.locator("input, textarea").first.fill(value)


def choose(page, label: str, option: str) -> None:
    """Pick an enum value. The select opens from the keyboard (a synthetic mouse click does not open it)."""
    from playwright.sync_api import expect

    control = field(page, label).locator(".p-select-button__control").first
    control.focus()
    page.keyboard.press("ArrowDown")
    page.get_by_text(option, exact=True).first.click()
    expect(control).to_have_text(option)


def test_custom_run_from_the_ui(served, page, tmp_path):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    ui, deployment = served["server"].ui_url, served["deployment"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out_dir = tmp_path / "browser-run"

    page.goto(f"{ui}/deployments/deployment/{deployment.id}")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    page.wait_for_url(re.compile(r"/deployments/deployment/.+/run"))
    choose(page, "preset", "smoke")
    fill_optional(page, "out_dir", "str", str(out_dir))
    fill_optional(page, "N Test", "int", "40", within=field(page, "classify"))
    page.screenshot(path=str(ARTIFACTS / "ui-custom-run-form.png"), full_page=True)
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(r"/deployments/deployment/[0-9a-f-]{36}$"))  # back on the deployment page
    page.locator("a[href*='/runs/flow-run/']").first.click()  # the new run in its list
    page.wait_for_url(re.compile(r"/runs/flow-run/[0-9a-f-]{36}"))
    run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", page.url).group(1)

    with temporary_settings(updates={PREFECT_API_URL: served["server"].api_url}):
        with get_client(sync_client=True) as client:
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

"""The dev stack's Dagster UI in Debian's Chromium: report_pdfs' week x shard partitions and their status."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from .test_dev_stack import SHARDS, DevStack, launch_partition_run

pytestmark = [
    pytest.mark.skipif(sys.version_info < (3, 13), reason="mongoeco's wire server needs Python >= 3.13"),
    pytest.mark.filterwarnings("ignore:Using variable_values and operation_name:DeprecationWarning"),
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHARED_SCREENSHOT = Path("/tmp/ui-screenshot.png")
WEEKS = 3  # the dev stack's default --weeks
# What the UI shows when the code location or a query broke.
ERROR_TEXTS = ("Error loading", "View error", "\nFailed\n", "Unexpected GraphQL error", "An unexpected error",
               "PythonError", "DagsterInvalidDefinitionError", "There are no matching materialized assets")


@pytest.fixture(scope="module")
def chromium():
    """Skip where the browser is genuinely absent, except in CI, where that is a failure."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {', '.join(missing)} missing: .ci/install-browser.sh installs the browser")
        pytest.skip(f"{', '.join(missing)} missing: run .ci/install-browser.sh (apt-get install chromium "
                    "chromium-driver) and pip install selenium")


@pytest.fixture(scope="module")
def ui_stack(chromium, tmp_path_factory):
    stack = DevStack(tmp_path_factory.mktemp("ui-stack"))
    stack.start()
    week, shard, _, _ = launch_partition_run(stack)  # one materialized partition among the missing ones
    yield stack, week, shard
    assert stack.stop() == 0
    assert stack.leftovers() == []


@pytest.fixture
def browser(chromium, tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not try to download a browser or driver
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1600,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _body(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _wait_for(driver, *expected: str) -> str:
    """The page text once it shows all of `expected`; fails at once should it show an error instead."""
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        text = _body(d)
        return text if all(e in text for e in expected) or any(e in text for e in ERROR_TEXTS) else None

    text = WebDriverWait(driver, 60, poll_frequency=0.5).until(ready)
    found = [e.strip() for e in ERROR_TEXTS if e in text]
    assert not found, f"the UI shows {found} at {driver.current_url}:\n{text[:3000]}"
    return text


def _click_list_item(driver, text: str) -> None:
    from selenium.webdriver.common.by import By

    # The lists of shards and weeks come after the time-range bar, which may show the same labels.
    matches = [e for e in driver.find_elements(By.XPATH, f"//span[normalize-space(text())='{text}']") if e.is_displayed()]
    assert matches, f"nothing labelled {text!r} on the page"
    matches[-1].click()


def _assert_not_blank(png: Path) -> None:
    from PIL import Image

    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, f"{png} is nearly blank ({len(colours)} colours)"


def test_report_pdfs_partitions_show_week_by_shard_status(ui_stack, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    stack, week, shard = ui_stack
    screenshot = tmp_path / "report_pdfs-partitions.png"
    try:
        browser.get(f"{stack.url}/locations")
        _wait_for(browser, "reporting_pipeline.defs.definitions", "Loaded")

        browser.get(f"{stack.url}/assets/report_pdfs")
        _wait_for(browser, "report_pdfs", "Latest materialization")
        for skip in browser.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
            skip.click()  # a sign-up dialog, should an instance not have it switched off
        browser.find_element(By.XPATH, "//*[@role='tab' and normalize-space()='Partitions']").click()
        text = _wait_for(browser, "Materialized (1)")
        assert "view=partitions" in browser.current_url
        assert f"{WEEKS * SHARDS} Partitions Selected" in text and f"Missing ({WEEKS * SHARDS - 1})" in text
        assert "Failed (0)" in text
        shards = [f"{i:02d}" for i in range(SHARDS)]
        assert all(f"\n{s}\n" in text for s in shards), text

        _click_list_item(browser, shard)
        WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith(f"partition={shard}"))
        _click_list_item(browser, week)
        text = _wait_for(browser, f"{shard}|{week}", "rendered")
        assert "\nMaterialized\n" in text and "weekly_reports_job" in text
    finally:
        browser.save_screenshot(str(screenshot))
        shutil.copyfile(screenshot, SHARED_SCREENSHOT)
        print(f"\nscreenshot: {screenshot} (copied to {SHARED_SCREENSHOT})")
    _assert_not_blank(screenshot)

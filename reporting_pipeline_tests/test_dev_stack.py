"""The dev stack as a user starts it: a partition run through the GraphQL API, the daemon's sensor, the outbox,
the Dagster UI in Debian's Chromium (report_pdfs' week x shard partitions and their status), shutdown.

One stack serves the module's tests, in order; the last one stops it.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reporting_pipeline.local.embedded import free_port
from reporting_pipeline.sharding import shard_of
from reporting_pipeline.stages.i18n import language
from reporting_pipeline.stages.notify import SUBJECT
from reporting_pipeline.weeks import last_complete_week

pytestmark = [
    pytest.mark.skipif(sys.version_info < (3, 13), reason="mongoeco's wire server needs Python >= 3.13"),
    # Raised inside dagster_graphql's own client, not by anything here.
    pytest.mark.filterwarnings("ignore:Using variable_values and operation_name:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[1]
SHARDS = 8
WEEKS = 3  # the dev stack's default --weeks
BUCKET = "clinical-reports"
NUL = b"\0"
# Anything the developer's shell points at elsewhere would stop the stand-ins from starting.
FOREIGN_ENV = ("MONGODB_URI", "AWS_ENDPOINT_URL", "SMTP_HOST", "DAGSTER_HOME", "REPORTS_BUCKET",
               "REPORT_FIRST_WEEK", "REPORT_SHARDS", "REPORT_TIMEZONE", "DAGSTER_UI_URL",
               "DAGSTER_DISABLE_TELEMETRY")  # the stack must set it itself


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) of a process, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0], fields[19]


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


class DevStack:
    """`python -m reporting_pipeline.local.dev` on free ports with a home of its own; remembers every process it had."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.home = workdir / "home"
        self.outbox = self.home / "outbox"
        self.ports = {name: free_port() for name in ("ui", "mongo", "s3", "smtp")}
        self.url = f"http://127.0.0.1:{self.ports['ui']}"
        self.mongo_uri = f"mongodb://127.0.0.1:{self.ports['mongo']}/?directConnection=true"
        self.s3_url = f"http://127.0.0.1:{self.ports['s3']}"
        self.log = workdir / "dev.log"
        # Inherited by every process of the stack, however deep: found in /proc/<pid>/environ after shutdown.
        self.marker = f"DEV_STACK_TEST_MARKER={os.urandom(8).hex()}"
        self.seen: dict[int, str] = {}  # pid -> start time, of every descendant observed
        self.process: subprocess.Popen | None = None
        self.startup_seconds = 0.0
        self.telemetry_url: str | None = None

    def command(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "reporting_pipeline.local.dev", "--home", str(self.home),
                "--ui-port", str(self.ports["ui"]), "--mongo-port", str(self.ports["mongo"]),
                "--s3-port", str(self.ports["s3"]), "--smtp-port", str(self.ports["smtp"]), *extra]

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
        name, value = self.marker.split("=")
        env = {**env, name: value}
        if self.telemetry_url:  # where Dagster's telemetry would go; the stack must send nothing there
            env["DAGSTER_TELEMETRY_URL"] = self.telemetry_url
        return env

    def start(self, timeout: float = 180) -> None:
        started = time.monotonic()
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(self.command(), env=self.env(), cwd=ROOT, stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        threading.Thread(target=self._watch, daemon=True).start()
        while "Dagster UI: " not in self.output():
            if self.process.poll() is not None or time.monotonic() - started > timeout:
                self.stop()
                pytest.fail(f"the dev stack did not come up:\n{self.output()[-4000:]}")
            time.sleep(0.5)
        with urllib.request.urlopen(f"{self.url}/server_info", timeout=10) as response:
            assert response.status == 200
        self.startup_seconds = time.monotonic() - started

    def _watch(self) -> None:
        while self.process.poll() is None:
            table = {pid: stat for pid in _all_pids() if (stat := _stat(pid))}
            frontier, found = [self.process.pid], set()
            while frontier:
                parent = frontier.pop()
                for pid, (ppid, _, started) in table.items():
                    if ppid == parent and pid not in found:
                        found.add(pid)
                        frontier.append(pid)
                        self.seen.setdefault(pid, started)
            time.sleep(0.3)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def leftovers(self) -> list[str]:
        """Processes of the stack still running: seen ones (same start time) and any carrying the marker."""
        left = {pid for pid, started in self.seen.items() if (s := _stat(pid)) and s[1] != "Z" and s[2] == started}
        for pid in _all_pids():
            try:
                if self.marker.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    stat = _stat(pid)
                    if stat and stat[1] != "Z":
                        left.add(pid)
            except OSError:
                pass
        # No backslash inside the f-string: Python 3.11 cannot even parse the module then.
        return [f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes().replace(NUL, b' ')[:200]!r}"
                for pid in sorted(left) if Path(f"/proc/{pid}").exists()]

    def stop(self, timeout: float = 90) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def submit_partition_run(stack: DevStack, rank: int = 0) -> tuple[str, str, list[str], str]:
    """Submit weekly_reports_job via GraphQL: last week, `rank`-th fullest shard; (week, shard, members, run id)."""
    import pymongo
    from dagster_graphql import DagsterGraphQLClient

    client = pymongo.MongoClient(stack.mongo_uri)
    try:
        ids = [s["_id"] for s in client["reporting"]["subscriptions"].find({"status": "active"}, {"_id": 1})]
    finally:
        client.close()
    shard = Counter(shard_of(i, SHARDS) for i in ids).most_common()[rank][0]
    members = sorted(i for i in ids if shard_of(i, SHARDS) == shard)
    week = last_complete_week(datetime.now(UTC), "UTC").key
    graphql = DagsterGraphQLClient("127.0.0.1", port_number=stack.ports["ui"])
    run_id = graphql.submit_job_execution("weekly_reports_job", tags={
        "dagster/partition": f"{shard}|{week}", "dagster/partition/shard": shard, "dagster/partition/week": week})
    return week, shard, members, run_id


def wait_for_run(stack: DevStack, run_id: str, until: tuple[str, ...] = ("SUCCESS", "FAILURE", "CANCELED"),
                 timeout: float = 150) -> str:
    """Poll the run's status through the GraphQL API until it is one of `until`; that status's name."""
    from dagster_graphql import DagsterGraphQLClient

    graphql = DagsterGraphQLClient("127.0.0.1", port_number=stack.ports["ui"])
    deadline = time.monotonic() + timeout
    while (status := graphql.get_run_status(run_id).name) not in until:
        assert time.monotonic() < deadline, f"run {run_id} still {status}:\n{stack.output()[-4000:]}"
        time.sleep(0.5)
    return status


def launch_partition_run(stack: DevStack) -> tuple[str, str, list[str], str]:
    """submit_partition_run, then wait for SUCCESS."""
    week, shard, members, run_id = submit_partition_run(stack)
    status = wait_for_run(stack, run_id)
    assert status == "SUCCESS", f"run {run_id} ended {status}:\n{stack.output()[-4000:]}"
    return week, shard, members, run_id


class TelemetryListener:
    """A local stand-in for Dagster's telemetry endpoint: records every request that reaches it."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append((self.path, self.rfile.read(int(self.headers.get("Content-Length") or 0))))
                self.send_response(200)
                self.end_headers()

            do_GET = do_PUT = do_POST

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/actions"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def telemetry():
    listener = TelemetryListener()
    yield listener
    listener.server.shutdown()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, telemetry):
    dev = DevStack(tmp_path_factory.mktemp("dev-stack"))
    # Dagster's uploader sends DAGSTER_HOME/logs at once when it starts: give it something to send.
    (dev.home / "logs").mkdir(parents=True)
    (dev.home / "logs" / "planted.log").write_text("anything in this folder would be uploaded\n")
    dev.telemetry_url = telemetry.url
    dev.start()
    print(f"\ndev stack healthy after {dev.startup_seconds:.1f} s")
    yield dev
    dev.stop()


@pytest.fixture(scope="module")
def partition_run(stack):
    """Last week's fullest shard, run once: (week, shard, members, run id, seconds it took, when it ended)."""
    started = time.monotonic()
    week, shard, members, run_id = launch_partition_run(stack)
    return week, shard, members, run_id, time.monotonic() - started, time.monotonic()


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHARED_SCREENSHOT = Path("/tmp/ui-screenshot.png")
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


def test_report_pdfs_partitions_show_week_by_shard_status(stack, partition_run, browser, tmp_path):
    """First: it needs no emails, so the delivery sensor's next tick is awaited meanwhile."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    week, shard = partition_run[:2]  # one materialized partition among the missing ones
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


def test_partition_run_is_emailed_by_the_sensor_with_a_working_link(stack, partition_run):
    import boto3
    import pymongo
    from dagster import DagsterInstance, RunsFilter
    from dagster._core.instance.config import dagster_instance_config

    from reporting_pipeline.local.outbox import read_outbox

    config, _ = dagster_instance_config(str(stack.home), "dagster.yaml")
    assert config["run_launcher"]["class"] == "DefaultRunLauncher" and "sqlite" in config["storage"]
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator" and config["run_retries"]["enabled"]

    week, shard, members, _, run_seconds, ran = partition_run
    db = pymongo.MongoClient(stack.mongo_uri, tz_aware=True)["reporting"]
    addresses = {s["email"]: s["_id"] for s in db.subscriptions.find({"_id": {"$in": members}})}
    deadline = time.monotonic() + 150  # the sensor ticks (every 5 s in the dev stack); then a delivery run starts
    while len(entries := [e for e in read_outbox(stack.outbox) if e.to in addresses]) < len(members):
        assert time.monotonic() < deadline, f"{len(entries)}/{len(members)} emails:\n{stack.output()[-4000:]}"
        time.sleep(1)
    delivered = time.monotonic()
    print(f"shard {shard} week {week}: {len(members)} subscribers, run {run_seconds:.1f} s, "
          f"emails {delivered - ran:.1f} s after it")

    assert sorted(e.to for e in entries) == sorted(addresses)
    s3 = boto3.client("s3", endpoint_url=stack.s3_url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    for entry in entries:
        message = email.message_from_bytes(entry.path.read_bytes(), policy=email.policy.default)
        report = db.reports.find_one({"subscription_id": addresses[entry.to], "week": week})
        # In the language the report was rendered in (the seed's participants have various locales).
        assert message["Subject"] == entry.subject == language(report["language"])._(SUBJECT)
        assert entry.link.startswith(f"{stack.s3_url}/{BUCKET}/") and "X-Amz-Signature=" in entry.link
        with urllib.request.urlopen(entry.link, timeout=30) as response:
            data = response.read()
        assert data.startswith(b"%PDF-") and hashlib.sha256(data).hexdigest() == report["sha256"]
        assert s3.head_object(Bucket=BUCKET, Key=report["s3_key"])["ServerSideEncryption"] == "AES256"

    listing = subprocess.run([sys.executable, "-m", "reporting_pipeline.local.outbox", "--home", str(stack.home)],
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert all(e.to in listing.stdout and e.link in listing.stdout for e in entries)
    assert f"{len(read_outbox(stack.outbox))} message(s) in {stack.outbox}" in listing.stdout

    # The delivery run was the daemon's doing: launched by the sensor, in its own process.
    with DagsterInstance.from_config(str(stack.home)) as instance:
        runs = instance.get_runs(RunsFilter(job_name="report_delivery_job", tags={"dagster/partition": f"{shard}|{week}"}))
    assert [r.tags.get("dagster/sensor_name") for r in runs] == ["report_delivery_sensor"]
    assert wait_for_run(stack, runs[0].run_id, timeout=60) == "SUCCESS"  # the emails leave before the run ends


def test_nothing_reaches_dagsters_telemetry_endpoint_and_no_service_log_is_in_its_folder(stack, telemetry):
    # By now the webserver and daemon have run for minutes, a run has been launched and emailed, the UI browsed.
    assert stack.process.poll() is None
    assert telemetry.received == []
    assert sorted(p.name for p in (stack.home / "logs").iterdir()) == ["planted.log"]
    assert {"mongo.log", "s3.log", "smtp.log"} <= {p.name for p in (stack.home / "service-logs").iterdir()}


def test_a_taken_port_is_refused_before_anything_starts(stack, tmp_path):
    other = DevStack(tmp_path)
    other.ports["ui"] = stack.ports["ui"]
    other.ports["s3"] = stack.ports["s3"]
    done = subprocess.run(other.command(), env=other.env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"port {stack.ports['ui']} for Dagster UI is already in use; choose another with --ui-port" in done.stderr
    assert f"port {stack.ports['s3']} for S3 is already in use; choose another with --s3-port" in done.stderr
    assert not other.home.exists() and not other.leftovers()


def test_sigterm_stops_every_process_of_the_stack_even_mid_run(stack):
    from dagster import DagsterInstance

    _, _, _, run_id = submit_partition_run(stack, rank=1)
    wait_for_run(stack, run_id, until=("STARTED",), timeout=60)  # a run worker is at work now
    assert len(stack.seen) >= 8  # 3 stand-ins, dagster dev, code server and its gRPC server, webserver, daemon
    started = time.monotonic()
    assert stack.stop() == 0
    print(f"stopped in {time.monotonic() - started:.1f} s; {len(stack.seen)} processes had been seen")
    assert "[dev] stopped" in stack.output()
    assert stack.leftovers() == []
    with DagsterInstance.from_config(str(stack.home)) as instance:
        status = instance.get_run_by_id(run_id).status.name
    print(f"the run in flight ended {status}")
    assert status in ("SUCCESS", "FAILURE", "CANCELED")  # finished within the grace time, or interrupted and recorded

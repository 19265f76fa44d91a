"""The production instance on a real PostgreSQL, driven by `dagster-daemon run`: queued runs within their limits,
then the delivery sensor, and one email per subscriber.

The instance is the production dagster.yaml with local processes standing in for pods (the default run
launcher) and smaller queue limits. MongoDB (mongoeco's wire server), S3 (moto) and SMTP (aiosmtpd) are
real servers on loopback. Needs PostgreSQL: `export DAGSTER_TEST_PG_DSN="$(bash .ci/postgres.sh)"`; without
it the test is skipped, except in CI (CI=true), where it fails. Run with -s to see its figures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance

from reporting_pipeline.local.embedded import patched_env
from reporting_pipeline.services import mongo

from .conftest import LAST_WEEK, seeded_wire_server

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DSN = os.environ.get("DAGSTER_TEST_PG_DSN", "postgresql://dagster:dagster@127.0.0.1:5432/dagster")
SHARDS = 3  # one more than the queue lets run at once
MAX_CONCURRENT_RUNS = 2
SUBSCRIBERS = 16
DEADLINE_SECONDS = 600  # a bound on a hang: on a loaded 2-core machine the cycle took over 170 s

pytestmark = pytest.mark.skipif(sys.version_info < (3, 13), reason="mongoeco's wire server needs Python >= 3.13")


def _connect(dsn: str):
    import psycopg2

    return psycopg2.connect(dsn, connect_timeout=3)


@pytest.fixture
def database():
    """A fresh database for this run (dropped after), as the DAGSTER_PG_* variables dagster.yaml reads."""
    import psycopg2
    from psycopg2.extensions import parse_dsn

    params = parse_dsn(DSN)
    try:
        admin = _connect(DSN)
    except psycopg2.OperationalError as error:
        reason = (f"PostgreSQL is not reachable at {params.get('host')}:{params.get('port', 5432)} "
                  f"({' '.join(str(error).split())}); start it with `bash .ci/postgres.sh`")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    admin.autocommit = True
    name = f"dagster_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {
            "DAGSTER_PG_HOST": params.get("host", "127.0.0.1"),
            "DAGSTER_PG_PORT": str(params.get("port", 5432)),
            "DAGSTER_PG_DB": name,
            "DAGSTER_PG_USERNAME": params["user"],
            "DAGSTER_PG_PASSWORD": params.get("password", ""),
        }
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def instance_yaml() -> dict:
    """Production dagster.yaml (storage, queue, retries, monitoring) with processes instead of Kubernetes Jobs."""
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    config["run_launcher"] = {"module": "dagster.core.launcher", "class": "DefaultRunLauncher"}
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed; dagster-postgres
    # brings psycopg2 (test_production.py::test_production_storage_names_an_installed_postgres_driver).
    config["storage"]["postgres"]["postgres_db"].setdefault("scheme", "postgresql+psycopg2")
    # The machine's PostgreSQL may have no TLS: production's sslmode=require would refuse it.
    config["storage"]["postgres"]["postgres_db"]["params"] = {"sslmode": "prefer"}
    # Processes, not pods: step logs stay in DAGSTER_HOME rather than going to production's S3 bucket.
    config.pop("compute_logs")
    queue = config["run_coordinator"]["config"]
    queue["max_concurrent_runs"] = MAX_CONCURRENT_RUNS
    for limit in queue["tag_concurrency_limits"]:
        limit["limit"] = min(limit["limit"], MAX_CONCURRENT_RUNS)
    queue["dequeue_interval_seconds"] = 1  # production keeps the default (5 s); a short test wants less
    return config


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries the marker: everything the daemon (and the CLI) started."""
    pids = []
    if not Path("/proc").is_dir():
        return pids  # not Linux: nothing to check with
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


ENDED = (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_CANCELED)


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of these (start, end) spans that overlap at any instant."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])  # an end before a start
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def run_spans(events: list) -> dict:
    """When the run held a slot of the queue (launched to ended) and when it ran (started to ended), from the
    events the daemon and the run wrote: exact, where polling the statuses would sample. A run that never
    launched or started has no such span (the test's status check says what became of it)."""
    times = {}
    for event in events:
        if event.dagster_event:
            times.setdefault(event.dagster_event.event_type, event.timestamp)
    ended = min((times[t] for t in ENDED if t in times), default=None)
    if ended is None:
        return {}
    return {name: (times[begun], ended) for name, begun in (("active", DagsterEventType.RUN_STARTING),
                                                             ("started", DagsterEventType.RUN_START)) if begun in times}


def test_daemon_on_postgres_queues_runs_within_limits_and_delivers_one_email_each(pipeline, database, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml()))
    marker = f"REPORTING_DAEMON_TEST={uuid.uuid4().hex}"
    partitions = [f"{shard:02d}|{LAST_WEEK}" for shard in range(SHARDS)]

    with seeded_wire_server(pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=SUBSCRIBERS,
                            weeks=2) as (wire, subscription_ids), \
            patched_env({"MONGODB_URI": wire.uri, **database}):
        db = mongo.connect(wire.uri)["reporting"]
        emails = {s["_id"]: s["email"] for s in db[mongo.SUBSCRIPTIONS].find()}
        # Sensors every 5 s, not 30: the delivery runs follow the report runs as soon as the limits let them.
        env = {**os.environ, "DAGSTER_HOME": str(home), "REPORT_SHARDS": str(SHARDS),
               "REPORT_SENSOR_INTERVAL_SECONDS": "5", marker.split("=")[0]: marker.split("=")[1]}

        # Creates the schema before daemon and CLI connect, so they never race to create it.
        with DagsterInstance.from_config(str(home)) as instance:
            log = (tmp_path / "daemon.log").open("w")
            started = time.monotonic()
            daemon = subprocess.Popen(
                [str(BIN / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                # The operator's way to queue a week's shards: one backfill, one run per partition.
                backfill = subprocess.run(
                    [str(BIN / "dagster"), "job", "backfill", "-w", str(ROOT / "workspace.yaml"),
                     "-j", "weekly_reports_job", "--partitions", ",".join(partitions),
                     "--tags", json.dumps({"report/week": LAST_WEEK}), "--noprompt"],
                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
                assert backfill.returncode == 0, backfill.stderr[-3000:]
                queued_at = time.monotonic() - started
                reports_done_at = None
                while time.monotonic() - started < DEADLINE_SECONDS:
                    assert daemon.poll() is None, "dagster-daemon exited:\n" + (tmp_path / "daemon.log").read_text()[-3000:]
                    runs = instance.get_runs()
                    reports = [r for r in runs if r.job_name == "weekly_reports_job"]
                    deliveries = [r for r in runs if r.job_name == "report_delivery_job"]
                    if reports_done_at is None and len(reports) == SHARDS and all(r.is_finished for r in reports):
                        reports_done_at = time.monotonic() - started
                    if len(deliveries) == SHARDS and all(r.is_finished for r in deliveries) and reports_done_at:
                        break
                    time.sleep(1)  # the limits are checked on the runs' events below, not by sampling here
                finished_at = time.monotonic() - started
            finally:
                stop = time.monotonic()
                daemon.send_signal(signal.SIGTERM)  # what Kubernetes sends; the daemon maps it to a clean exit
                try:
                    exit_code = daemon.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(daemon.pid, signal.SIGKILL)  # its own session: only what it started
                    exit_code = daemon.wait()
                stopped_in = time.monotonic() - stop
                log.close()
                deadline = time.monotonic() + 15
                while (left := marked_pids(marker)) and time.monotonic() < deadline:
                    time.sleep(0.5)
                for pid in left:
                    os.kill(pid, signal.SIGKILL)  # carries this test's marker: ours to end

            runs = instance.get_runs()
            reports = [r for r in runs if r.job_name == "weekly_reports_job"]
            logs = {run.run_id: instance.all_logs(run.run_id) for run in runs}
            spans = {run_id: run_spans(events) for run_id, events in logs.items()}
            max_active = most_at_once([s["active"] for s in spans.values() if "active" in s])
            max_started = most_at_once([s["started"] for s in spans.values() if "started" in s])
            # Orchestration overhead per run: from the daemon launching it to its first subscriber fetched.
            overheads = []
            for run in reports:
                launched = spans[run.run_id]["active"][0] if "active" in spans[run.run_id] else None
                fetched = min((e.timestamp for e in logs[run.run_id] if " subscribers fetched, " in e.user_message),
                              default=None)
                overheads.append(round(fetched - launched, 1) if fetched and launched else None)
            statuses = Counter((r.job_name, r.status.value) for r in runs)
            recipients = Counter(m["To"] for m in pipeline.outbox.messages)
            print(f"\ndaemon on PostgreSQL: {SUBSCRIBERS} subscribers, {SHARDS} shards; runs {dict(statuses)}; "
                  f"at most {max_started} running at once ({max_active} holding a slot; limit "
                  f"{MAX_CONCURRENT_RUNS}); queued after "
                  f"{queued_at:.1f} s, reports done after {reports_done_at or float('nan'):.1f} s, "
                  f"{len(pipeline.outbox.messages)} emails after {finished_at:.1f} s; daemon stopped in "
                  f"{stopped_in:.1f} s with exit code {exit_code}, {len(left)} process(es) left behind; "
                  f"launch to first subscriber per run: {sorted(overheads, key=lambda o: o or 0)} s")

            daemon_log = (tmp_path / "daemon.log").read_text()
            assert statuses == {("weekly_reports_job", "SUCCESS"): SHARDS, ("report_delivery_job", "SUCCESS"): SHARDS}, \
                daemon_log[-3000:]
            assert sorted(r.tags["dagster/partition"] for r in reports) == partitions
            assert 1 <= max_started <= max_active <= MAX_CONCURRENT_RUNS
            assert set(recipients) == set(emails.values()) and set(recipients.values()) == {1}
            assert db[mongo.REPORTS].count_documents({"week": LAST_WEEK}) == len(subscription_ids)
            assert exit_code == 0 and not left, daemon_log[-3000:]

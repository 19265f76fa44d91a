"""Fault injection: killed runs, double launches, a poison subscriber, flaky S3/SMTP/MongoDB, unsubscribing late.

Each test prints its figures (run pytest with -s to see them). Faults come from real servers: moto's
S3 behind a layer that fails requests, an SMTP server that defers, a TCP link to MongoDB that is cut,
and a run process killed with SIGKILL.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, build_sensor_context

from reporting_pipeline.defs import sensors
from reporting_pipeline.defs.partitions import report_partition_key
from reporting_pipeline.local.demo import materialization_metadata, run_weekly_cycle
from reporting_pipeline.local.embedded import Outbox, SmtpServer, patched_env
from reporting_pipeline.local.seed import seed
from reporting_pipeline.services import mongo
from reporting_pipeline.services.objectstore import Encryption, make_client
from reporting_pipeline.weeks import as_utc

from .conftest import LAST_WEEK, NOW, seeded_wire_server
from .faults import CuttableTcpProxy, DeferringOutbox, FaultyS3Server

needs_wire_server = pytest.mark.skipif(sys.version_info < (3, 13), reason="mongoeco's wire server needs Python >= 3.13")


@dataclass
class World:
    pipeline: object
    db: object
    s3: object  # a client of `s3_server`
    s3_server: FaultyS3Server
    subscription_ids: list
    emails: dict


@pytest.fixture
def world(pipeline):
    """A database and an S3 that several processes share, seeded with 24 subscribers, two weeks of data each."""
    with FaultyS3Server() as s3_server:
        s3 = make_client(s3_server.endpoint_url)
        with seeded_wire_server(s3, pipeline.bucket, pipeline.encryption, subscribers=24, weeks=2) as (server, ids), \
                patched_env({"MONGODB_URI": server.uri, "AWS_ENDPOINT_URL": s3_server.endpoint_url}):
            db = mongo.connect(server.uri)["reporting"]
            emails = {s["_id"]: s["email"] for s in db[mongo.SUBSCRIPTIONS].find()}
            yield World(pipeline, db, s3, s3_server, ids, emails)


# Long enough that no rerun outlasts it however loaded the machine; tests end a lease by moving its expiry.
LEASE_SECONDS = 600


def child(*jobs, **env):
    """A run process for the week's only shard (REPORT_SHARDS=1 puts every subscriber in one run)."""
    return subprocess.Popen(
        [sys.executable, "-m", "reporting_pipeline_tests.run_job", LAST_WEEK, "00", *jobs],
        env={**os.environ, "REPORT_SHARDS": "1", "REPORT_DELIVERY_LEASE_SECONDS": str(LEASE_SECONDS), **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def render_in_process(instance):
    """The week's reports of the only shard, rendered in this process: the tests that start with them are about
    what comes after."""
    from reporting_pipeline.defs.definitions import build_definitions
    from reporting_pipeline.settings import Settings

    job = build_definitions(Settings.from_env(shards=1)).resolve_job_def("weekly_reports_job")
    assert job.execute_in_process(instance=instance, partition_key=report_partition_key(LAST_WEEK, "00")).success


class KillAtUpload:
    """Has the S3 server signal the run (`process`, set once started; SIGKILL unless `sig`) as its `n`-th
    report upload arrives.

    The run uploads a batch's reports on several threads, so later uploads may reach the (threaded) server
    while the signal is on its way: every upload from the `n`-th on is refused, and none of them lands.
    """

    def __init__(self, server: FaultyS3Server, n: int, sig: signal.Signals = signal.SIGKILL):
        self.n, self.sig, self.uploads, self.process = n, sig, 0, None
        self._lock = threading.Lock()
        server.fail_if, server.enabled = self, True

    def __call__(self, method: str, path: str) -> bool:
        if method != "PUT" or "/reports/" not in path:
            return False
        with self._lock:
            self.uploads += 1
            if self.uploads == self.n:
                os.kill(self.process.pid, self.sig)
            return self.uploads >= self.n


def report_objects(world) -> list[str]:
    pages = world.s3.get_paginator("list_objects_v2").paginate(Bucket=world.pipeline.bucket, Prefix="reports/")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def outcome(world, messages) -> dict:
    """lost / duplicate counts over reports, objects and emails."""
    recipients = Counter(m["To"] for m in messages)
    expected = set(world.emails.values())
    reports = list(world.db[mongo.REPORTS].find())
    objects = report_objects(world)
    return {
        "reports": len(reports), "objects": len(objects), "emails": sum(recipients.values()),
        "lost": len(expected - set(recipients)) + len(set(world.subscription_ids) - {r["subscription_id"] for r in reports}),
        "dup": sum(n - 1 for n in recipients.values() if n > 1) + (len(objects) - len(set(objects)))
        + (len(reports) - len({(r["subscription_id"], r["week"]) for r in reports})),
    }


@needs_wire_server
def test_sigkill_while_rendering_then_rerun_loses_nothing_and_duplicates_nothing(world):
    kill = KillAtUpload(world.s3_server, 4)  # the run dies as S3 receives its fourth report
    run = kill.process = child("weekly_reports_job")
    assert run.wait(180) == -signal.SIGKILL
    world.s3_server.enabled = False
    at_kill = len(report_objects(world))
    assert at_kill <= 3  # killed part-way: at most the three uploads before the fatal one landed

    assert child("weekly_reports_job", "report_delivery_job").wait(300) == 0
    figures = outcome(world, world.pipeline.outbox.messages)
    print(f"\nSIGKILL while rendering: {len(world.subscription_ids)} subscribers, killed after {at_kill} reports; "
          f"after rerun {figures['reports']} reports, {figures['objects']} objects, {figures['emails']} emails, "
          f"{figures['lost']} lost, {figures['dup']} dup")
    assert figures == {"reports": 24, "objects": 24, "emails": 24, "lost": 0, "dup": 0}


class KillingOutbox(Outbox):
    """Kills the run process when the `kill_at`-th message arrives, before accepting it."""

    def __init__(self, kill_at):
        super().__init__()
        self.kill_at = kill_at
        self.pid = None
        self.seen = 0

    async def handle_DATA(self, server, session, envelope):
        self.seen += 1
        if self.seen == self.kill_at and self.pid:
            os.kill(self.pid, signal.SIGKILL)
            return "451 4.3.0 connection lost"
        return await super().handle_DATA(server, session, envelope)


@needs_wire_server
def test_sigkill_while_delivering_then_rerun_after_the_lease_sends_the_rest_once(world, instance):
    from reporting_pipeline.defs.definitions import build_definitions
    from reporting_pipeline.settings import Settings

    render_in_process(instance)
    handler = KillingOutbox(kill_at=10)
    with SmtpServer(handler) as smtp:
        run = child("report_delivery_job", SMTP_PORT=str(smtp.port))
        handler.pid = run.pid
        assert run.wait(120) == -signal.SIGKILL
        at_kill = len(handler.messages)
        in_flight = world.db[mongo.DELIVERIES].count_documents({"status": "sending"})
        # A rerun inside the lease (the daemon's retry of the dead run) leaves the claimed message alone,
        # and says so: held elsewhere, not complete. After the lease, the message goes out once.
        claim = world.db[mongo.DELIVERIES].find_one({"status": "sending"})
        rerun = build_definitions(Settings.from_env(shards=1, smtp_port=smtp.port)).resolve_job_def(
            "report_delivery_job").execute_in_process(instance=instance, partition_key=report_partition_key(LAST_WEEK, "00"))
        said = materialization_metadata(rerun, "report_deliveries")
        assert (said["sent"], said["already_sent"], said["held_elsewhere"], said["complete"]) == (14, 9, 1, False)
        within_lease = len(handler.messages)
        # The lease runs out (its holder is dead): moved, not waited for.
        world.db[mongo.DELIVERIES].update_one({"_id": claim["_id"]}, {"$set": {
            "lease_expires_at": datetime.now(UTC) - timedelta(seconds=1)}})
        assert child("report_delivery_job", SMTP_PORT=str(smtp.port)).wait(120) == 0
    figures = outcome(world, handler.messages)
    print(f"\nSIGKILL while delivering: {len(world.subscription_ids)} subscribers, killed at message 10 "
          f"({at_kill} accepted, {in_flight} claim in flight); rerun within lease: {within_lease} emails; "
          f"after lease: {figures['emails']} emails, {figures['lost']} lost, {figures['dup']} dup")
    assert at_kill == 9 and in_flight == 1 and within_lease == 23
    assert figures == {"reports": 24, "objects": 24, "emails": 24, "lost": 0, "dup": 0}


@needs_wire_server
def test_the_same_partition_launched_twice_at_once_sends_one_email_each(world):
    runs = [child("weekly_reports_job", "report_delivery_job") for _ in range(2)]
    codes = [r.wait(300) for r in runs]
    figures = outcome(world, world.pipeline.outbox.messages)
    claims = world.db["delivery_audit"].count_documents({})
    print(f"\ntwo concurrent launches: exit codes {codes}; {figures['reports']} reports, {figures['objects']} objects, "
          f"{figures['emails']} emails, {claims} audited sends, {figures['lost']} lost, {figures['dup']} dup")
    assert codes == [0, 0]
    assert figures == {"reports": 24, "objects": 24, "emails": 24, "lost": 0, "dup": 0} and claims == 24


def test_one_poison_subscriber_among_50(pipeline, instance):
    seeded = seed(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=50, weeks=1,
                  now=NOW, photos=False)
    poison = seeded.subscription_ids[17]
    sub = pipeline.db[mongo.SUBSCRIPTIONS].find_one({"_id": poison})
    # A unit of 120,000 characters: its table row cannot fit on any page, and the renderer gives up. The
    # built-in layout prints the records' own units (a report definition would leave such records out).
    pipeline.db[mongo.TRIALS].update_many({}, {"$unset": {"report_definition": ""}})
    pipeline.db[mongo.RECORDS].update_many({"participant_id": sub["participant_id"]}, {"$set": {"unit": "kg " * 40000}})

    result, _ = run_weekly_cycle(pipeline.definitions(), instance, NOW)

    runs_ok = all(r.success for r in result.report_runs + result.delivery_runs)
    rendered = sum(r.asset_materialization.metadata["rendered"].value for r in instance.fetch_materializations(
        AssetKey("report_pdfs"), limit=50).records)
    failed = sum(r.asset_materialization.metadata["failed"].value for r in instance.fetch_materializations(
        AssetKey("report_pdfs"), limit=50).records)
    letters = list(pipeline.db[mongo.DEAD_LETTERS].find())
    print(f"\npoison subscriber: 50 subscribers, {len(pipeline.outbox.messages)} delivered, {len(letters)} dead letter "
          f"({letters[0]['stage']}/{letters[0]['code']}), runs all succeeded: {runs_ok}, "
          f"partition metadata rendered={rendered} failed={failed}")
    assert runs_ok and rendered == 49 and failed == 1
    assert len(pipeline.outbox.messages) == 49 and sub["email"] not in {m["To"] for m in pipeline.outbox.messages}
    assert [(d["subscription_id"], d["stage"], d["code"], d["status"]) for d in letters] == [
        (poison, "render", "LayoutError", "open")]
    assert "kg kg" not in letters[0]["message"]  # the data it choked on is not copied into the ledger


@needs_wire_server
def test_transient_s3_smtp_and_mongodb_failures_are_retried_and_everything_is_delivered(pipeline, instance):
    from reporting_pipeline.defs.definitions import build_definitions

    outbox = DeferringOutbox(defer_first=8)
    s3 = FaultyS3Server(fail_ratio=0.2)
    client = make_client(s3.endpoint_url)
    with s3, SmtpServer(outbox) as smtp, \
            seeded_wire_server(client, pipeline.bucket, Encryption(), subscribers=30, weeks=2) as (wire, subscription_ids), \
            CuttableTcpProxy(wire.port) as link:
        uri = (f"mongodb://127.0.0.1:{link.port}/?directConnection=true&serverSelectionTimeoutMS=800"
               "&connectTimeoutMS=800&socketTimeoutMS=3000")
        env = {"MONGODB_URI": uri, "AWS_ENDPOINT_URL": s3.endpoint_url, "SMTP_PORT": str(smtp.port),
               "REPORT_RETRY_BASE_SECONDS": "0.2", "REPORT_RETRY_CAP_SECONDS": "2",
               "REPORT_REDRIVE_BASE_DELAY_SECONDS": "0"}
        with patched_env(env):
            db = mongo.connect(uri)["reporting"]
            definitions = build_definitions()
            s3.enabled = True
            # MongoDB goes away in the middle of the run, whatever the machine's speed: after the
            # pipeline's 40th message to it; it is back once three connection attempts were refused.
            link.cut_after(messages=40, refuse=3)
            started = time.monotonic()
            cycle, cursor = run_weekly_cycle(definitions, instance, NOW)
            rounds = 0
            for rounds in range(1, 8):  # the system's own retry machinery: redrive, then delivery
                redrive = definitions.resolve_sensor_def("redrive_sensor").evaluate_tick(build_sensor_context(
                    instance=instance, definitions=definitions, resources=definitions.resources))
                for request in redrive.run_requests:
                    definitions.resolve_job_def(request.job_name).execute_in_process(
                        instance=instance, partition_key=request.partition_key, run_config=request.run_config,
                        tags={**request.tags, "dagster/run_key": request.run_key}, raise_on_error=False)
                more, cursor = run_weekly_cycle(definitions, instance, NOW, sensor_cursor=cursor, skip_schedule=True)
                if not redrive.run_requests and not more.delivery_runs:
                    break
            seconds = time.monotonic() - started
            recipients = Counter(m["To"] for m in outbox.messages)
            open_letters = db[mongo.DEAD_LETTERS].count_documents({"status": "open"})
            max_smtp = max(outbox.attempts.values())
            letters = list(db[mongo.DEAD_LETTERS].find())
            redrives = max([d.get("redrives", 0) for d in letters], default=0)
            print(f"\ntransient faults: 30 subscribers; S3 {s3.injected} injected 500/503 of "
                  f"{sum(s3.requests.values())} requests; SMTP {outbox.deferred} deferrals (451), at most {max_smtp} "
                  f"attempts per message over {1 + redrives} run(s); {len(letters)} dead letter(s) taken by "
                  f"automatic redrive; MongoDB cut {link.cuts}x ({link.refused} connections refused meanwhile); "
                  f"{len(recipients)} delivered, "
                  f"{sum(n - 1 for n in recipients.values())} dup, {open_letters} open dead letters, "
                  f"{rounds} redrive round(s), {seconds:.1f} s")
            assert s3.injected > 10 and outbox.deferred == 8 and link.cuts == 1 and link.refused > 0
            assert set(recipients) == {e["email"] for e in db[mongo.ENROLLMENTS].find()} and max(recipients.values()) == 1
            assert open_letters == 0
            # Never more than REPORT_RETRY_ATTEMPTS (5) tries per message in one run; a message that used
            # them all became a dead letter (with exactly 5 attempts) and the redrive sent it later.
            assert max_smtp <= 5 * (1 + redrives)
            assert all(d["attempts"] <= 5 * (1 + d.get("redrives", 0)) for d in letters)
            assert all(d["status"] == "resolved" and d["transient"] for d in letters)
            assert db[mongo.REPORTS].count_documents({}) == len(subscription_ids)


def test_unsubscribed_between_render_and_delivery_gets_no_email(pipeline, instance):
    seeded = seed(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=10, weeks=1, now=NOW)
    definitions = pipeline.definitions()
    leaver = seeded.subscription_ids[4]
    job = definitions.resolve_job_def("weekly_reports_job")
    from reporting_pipeline.defs.partitions import report_partition_key
    from reporting_pipeline.sharding import shard_ids

    for shard in shard_ids(8):
        assert job.execute_in_process(instance=instance, partition_key=report_partition_key(LAST_WEEK, shard)).success
    assert pipeline.db[mongo.REPORTS].count_documents({}) == 10
    pipeline.db[mongo.SUBSCRIPTIONS].update_one({"_id": leaver}, {"$set": {"status": "unsubscribed"}})
    run_weekly_cycle(definitions, instance, NOW, skip_schedule=True)
    sent_to = {m["To"] for m in pipeline.outbox.messages}
    leaver_email = pipeline.db[mongo.SUBSCRIPTIONS].find_one({"_id": leaver})["email"]
    print(f"\nunsubscribed after rendering: 10 reports rendered, {len(sent_to)} emails, "
          f"{int(leaver_email in sent_to)} to the unsubscribed participant")
    assert len(sent_to) == 9 and leaver_email not in sent_to
    assert pipeline.db[mongo.DELIVERIES].count_documents({"subscription_id": leaver}) == 0


@needs_wire_server
def test_a_delivery_run_killed_between_claim_and_send_heals_without_anyone_acting(world, instance, monkeypatch):
    """The claim of a dead run holds its report until the lease runs out; then the redrive sensor's
    healer launches delivery on its own. Nobody redrives, resolves or launches anything by hand."""
    from reporting_pipeline.defs.definitions import build_definitions
    from reporting_pipeline.settings import Settings

    lease = 3
    render_in_process(instance)
    handler = KillingOutbox(kill_at=10)
    with SmtpServer(handler) as smtp:
        run = child("report_delivery_job", SMTP_PORT=str(smtp.port), REPORT_DELIVERY_LEASE_SECONDS=str(lease))
        handler.pid = run.pid
        assert run.wait(120) == -signal.SIGKILL
        killed = time.monotonic()
        claim = world.db[mongo.DELIVERIES].find_one({"status": "sending"})
        definitions = build_definitions(Settings.from_env(shards=1, smtp_port=smtp.port, delivery_lease_seconds=lease))

        def tick():
            result = definitions.resolve_sensor_def("redrive_sensor").evaluate_tick(build_sensor_context(
                instance=instance, definitions=definitions, resources=definitions.resources))
            runs = [definitions.resolve_job_def(r.job_name).execute_in_process(
                instance=instance, partition_key=r.partition_key, tags={**r.tags, "dagster/run_key": r.run_key})
                for r in result.run_requests]
            return result.run_requests, runs

        # A tick while the lease still runs (the sensors' clock held there): the holder may be alive.
        lease_end = as_utc(claim["lease_expires_at"])
        monkeypatch.setattr(sensors, "utcnow", lambda: lease_end - timedelta(milliseconds=1))
        assert tick() == ([], [])
        monkeypatch.undo()
        # The lease runs out (awaited, not guessed: its expiry is in the ledger); the next tick heals.
        time.sleep(max(0.0, (lease_end - datetime.now(UTC)).total_seconds()) + 0.05)
        requests, runs = tick()
        recovered = time.monotonic() - killed
        assert [r.tags.get("report/heal") for r in requests] == ["delivery"] and all(r.success for r in runs)
        healed = materialization_metadata(runs[0], "report_deliveries")
        assert (healed["sent"], healed["already_sent"], healed["complete"]) == (15, 9, True)
        assert tick() == ([], [])  # healed: nothing left to do
    figures = outcome(world, handler.messages)
    print(f"\nkilled between claim and send (lease {lease} s): {figures['emails']} emails, {figures['lost']} lost, "
          f"{figures['dup']} dup; recovered {recovered:.1f} s after the kill with no operator action")
    assert figures == {"reports": 24, "objects": 24, "emails": 24, "lost": 0, "dup": 0}
    assert world.db[mongo.REPORTS].count_documents({"delivery_state": "sent"}) == 24


def _processes_with(marker: str) -> list[int]:
    """Live processes whose environment carries `marker` (inherited by everything a process starts)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in open(f"/proc/{pid}/environ", "rb").read().split(b"\0"):
                state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(pid))
        except OSError:
            pass
    return found


def run_signalled_at_upload(world, home: Path, sig: signal.Signals, n: int = 5) -> tuple[int, dict, list[int]]:
    """A report run process for the week's only shard on the instance in `home`, sent `sig` as its `n`-th report
    upload arrives. Its exit status, its environment, and the processes it started still alive afterwards."""
    marker = f"SIGNALLED_RUN_MARKER={os.urandom(6).hex()}"
    # Batches of 10: the shard's 24 subscribers take worker processes, which must end with the run.
    env = {"DAGSTER_HOME": str(home), "REPORT_SHARDS": "1", "REPORT_BATCH_SIZE": "10",
           marker.split("=")[0]: marker.split("=")[1]}
    fault = KillAtUpload(world.s3_server, n, sig)
    run = fault.process = subprocess.Popen(
        [sys.executable, "-m", "reporting_pipeline_tests.launch_run", LAST_WEEK, "00", "weekly_reports_job"],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = run.wait(180)
    world.s3_server.enabled = False
    # Workers exit when their run's process does (a pidfd wakes them): awaited, with a deadline.
    deadline = time.monotonic() + 30
    while (left := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return status, env, left


def retry_of(instance, run_id: str, env: dict):
    """The retry the daemon launches of a failed report run (re-execution from failure) in a process of its own,
    as a retried run's pod is; the retry's run, and the metadata it materialized `report_pdfs` with."""
    from dagster import DagsterEventType

    done = subprocess.run([sys.executable, "-m", "reporting_pipeline_tests.launch_run", "--retry-of", run_id,
                           "weekly_reports_job"], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    [retry] = [run for run in instance.get_runs() if run.parent_run_id == run_id]
    for event in instance.all_logs(retry.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        materialization = event.dagster_event.step_materialization_data.materialization
        if materialization.asset_key.path[-1] == "report_pdfs":
            return retry, {key: value.value for key, value in materialization.metadata.items()}
    return retry, {}


@needs_wire_server
def test_a_killed_report_run_leaves_no_process_behind_and_its_retry_finishes(world, tmp_path):
    """A run worker SIGKILLed mid-run (an evicted pod): nothing it started lives on, and the retry Dagster
    makes of it (re-execution from failure) has its step to run and finishes the shard."""
    from dagster import DagsterInstance, DagsterRunStatus

    home = tmp_path / "dagster"
    home.mkdir()
    status, env, left = run_signalled_at_upload(world, home, signal.SIGKILL)
    assert status == -signal.SIGKILL
    assert left == [], "processes of the killed run live on"

    with patched_env(env), DagsterInstance.get() as instance:
        [killed] = instance.get_runs()
        assert killed.status == DagsterRunStatus.STARTED  # nobody told Dagster: its run monitoring would
        instance.report_run_failed(killed)  # what run monitoring does when the run worker is gone
        retry, stored = retry_of(instance, killed.run_id, env)
        assert retry.status == DagsterRunStatus.SUCCESS
    figures = outcome(world, [])
    print(f"\nSIGKILL of a report run at its 5th upload: {len(left)} processes left; retry "
          f"{retry.status.value}, {stored['rendered']} reports stored, "
          f"{figures['reports']} in MongoDB, {figures['objects']} objects")
    assert stored["rendered"] == 24 and stored["workers_started"]
    assert (figures["reports"], figures["objects"]) == (24, 24)


@needs_wire_server
def test_a_report_run_told_to_stop_ends_its_step_at_once_and_its_retry_finishes(world, tmp_path):
    """SIGTERM to a run worker mid-run (a pod evicted or drained: Kubernetes SIGKILLs it 30 s later): the step
    fails at once instead of being retried in place, its worker processes end, Dagster marks the run for its
    daemon's run retry, and that retry (re-execution from failure) finishes the shard."""
    from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

    home = tmp_path / "dagster"
    home.mkdir()
    # The deployment's run retries (dagster.yaml): they decide whether Dagster marks a failed run for a retry.
    deployment = yaml.safe_load((Path(__file__).parents[1] / "dagster.yaml").read_text())
    (home / "dagster.yaml").write_text(yaml.safe_dump({key: deployment[key] for key in ("run_retries", "telemetry")}))
    status, env, left = run_signalled_at_upload(world, home, signal.SIGTERM)
    assert status == 1  # the run failed, and its process ended by itself
    assert left == [], "processes of the stopped run live on"

    with patched_env(env), DagsterInstance.get() as instance:
        [stopped] = instance.get_runs()
        assert stopped.status == DagsterRunStatus.FAILURE
        assert stopped.tags.get("dagster/will_retry") == "true"  # Dagster's mark for the daemon's run retry
        assert not instance.all_logs(stopped.run_id, of_type=DagsterEventType.STEP_RESTARTED)
        retry, stored = retry_of(instance, stopped.run_id, env)
        assert retry.status == DagsterRunStatus.SUCCESS
    figures = outcome(world, [])
    print(f"\nSIGTERM to a report run at its 5th upload: run {stopped.status.value}, will retry; "
          f"{len(left)} processes left; retry stored {stored['rendered']} reports, "
          f"{figures['reports']} in MongoDB, {figures['objects']} objects")
    assert (figures["reports"], figures["objects"]) == (24, 24)

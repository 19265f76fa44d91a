"""Subscriptions end to end: the sensor that validates them, first reports, withdrawals, one-click unsubscribe."""

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

import pytest
from dagster import build_sensor_context
from fastapi.testclient import TestClient
from pymongo.errors import AutoReconnect

from reporting_pipeline.apps.api import JwtSettings, create_app
from reporting_pipeline.defs import sensors
from reporting_pipeline.defs.resources import MongoResource
from reporting_pipeline.local.demo import run_weekly_cycle
from reporting_pipeline.local.seed import seed
from reporting_pipeline.services import mongo
from reporting_pipeline.sharding import shard_of
from reporting_pipeline.stages.subscribe import subscribe

from .conftest import LAST_WEEK, NOW
from .test_api import AUDIENCE, ISSUER, SECRET, auth


@pytest.fixture(autouse=True)
def sensor_clock(monkeypatch):
    """The sensors' clock at the seed's NOW: the week a first report is for must not follow the day the tests run."""
    monkeypatch.setattr(sensors, "utcnow", lambda: NOW)


def enroll(db, participant, trial="TRIAL-CARDIO-01", email=None, **extra):
    db[mongo.ENROLLMENTS].insert_one({
        "_id": f"enr-{participant}", "trial_id": trial, "participant_id": participant,
        "email": email or f"{participant.lower()}@example.org", "status": "active",
        "consent_electronic_reports": True, "updated_at": datetime.now(UTC), **extra})


def tick(definitions, instance, cursor=None):
    sensor = definitions.resolve_sensor_def("subscription_sensor")
    return sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=cursor, definitions=definitions,
                                                     resources=definitions.resources))


def run_requests(definitions, instance, requests):
    for request in requests:
        result = definitions.resolve_job_def(request.job_name).execute_in_process(
            instance=instance, partition_key=request.partition_key, run_config=request.run_config,
            tags={**request.tags, "dagster/run_key": request.run_key})
        assert result.success


def test_sensor_validates_pending_subscriptions_and_requests_one_first_report_run_per_shard(pipeline, instance):
    db = pipeline.db
    seed(db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=4, now=NOW)
    for n in range(6):
        enroll(db, f"P-NEW{n}")
    enroll(db, "P-BADMAIL", email="not an address")
    new = [subscribe(db, "TRIAL-CARDIO-01", f"P-NEW{n}")[0]["_id"] for n in range(6)]
    bad = subscribe(db, "TRIAL-CARDIO-01", "P-BADMAIL")[0]["_id"]
    definitions = pipeline.definitions()

    first = tick(definitions, instance)
    statuses = {d["_id"]: (d["status"], d.get("status_reason")) for d in db[mongo.SUBSCRIPTIONS].find()}
    assert all(statuses[s] == ("active", "validated") for s in new)
    assert statuses[bad] == ("rejected", "invalid_email")
    shards = {shard_of(s, 8) for s in new}
    assert len(first.run_requests) == len(shards)  # one run per shard touched, not one per subscriber
    requested = sorted(s for r in first.run_requests
                       for s in r.run_config["ops"]["build_reports"]["config"]["subscription_ids"])
    assert requested == sorted(new)
    assert {r.tags["report/week"] for r in first.run_requests} == {LAST_WEEK}
    # Until their runs exist the requests stand (the daemon launches a run key once); then they are done.
    again = tick(definitions, instance, first.cursor)
    assert sorted(r.run_key for r in again.run_requests) == sorted(r.run_key for r in first.run_requests)
    run_requests(definitions, instance, first.run_requests)
    assert not tick(definitions, instance, again.cursor).run_requests
    assert {r["status"] for r in db["redrive_requests"].find()} == {"launched"}


class FailingEnrollmentReads(MongoResource):
    """MongoDB whose enrollment-change query fails once: a tick that dies after validating subscriptions."""

    def get_db(self):
        return _FailOnce(super().get_db())


class _FailOnce:
    failed = False

    def __init__(self, db):
        self._db = db

    def __getitem__(self, name):
        collection = self._db[name]
        if name != mongo.ENROLLMENTS or _FailOnce.failed:
            return collection

        class Flaky:
            def __getattr__(self, attr):
                return getattr(collection, attr)

            def find(self, query=None, *args, **kwargs):
                if query and "updated_at" in str(query) and not _FailOnce.failed:  # the change query
                    _FailOnce.failed = True
                    raise AutoReconnect("connection reset")
                return collection.find(query, *args, **kwargs)

        return Flaky()

    def __getattr__(self, attr):
        return getattr(self._db, attr)


def test_a_tick_that_fails_after_validating_still_gets_the_first_reports_asked_for(pipeline, instance):
    db = pipeline.db
    seed(db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=2, now=NOW)
    enroll(db, "P-LATE")
    late = subscribe(db, "TRIAL-CARDIO-01", "P-LATE")[0]["_id"]
    definitions = pipeline.definitions()
    sensor = definitions.resolve_sensor_def("subscription_sensor")
    flaky = FailingEnrollmentReads(uri=pipeline.env["MONGODB_URI"])
    with pytest.raises(Exception, match="connection reset"):
        sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=definitions,
                                                  resources={**definitions.resources, "mongo": flaky}))
    # The next tick, with MongoDB back, asks for the first report of whoever was validated meanwhile.
    result = tick(definitions, instance)
    requested = [s for r in result.run_requests
                 for s in r.run_config["ops"]["build_reports"]["config"]["subscription_ids"]]
    assert late in requested
    assert db[mongo.SUBSCRIPTIONS].find_one({"_id": late})["status"] == "active"


def test_withdrawals_after_a_bulk_update_of_more_than_a_tick_are_followed(pipeline, instance, monkeypatch):
    monkeypatch.setattr(sensors, "SUBSCRIPTION_CHANGES_PER_TICK", 100)
    db = pipeline.db
    seeded = seed(db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=3, weeks=1, now=NOW)
    definitions = pipeline.definitions()
    cursor = tick(definitions, instance).cursor
    # One bulk update gives 250 enrollments the same timestamp: more than a tick reads.
    same = datetime.now(UTC).replace(microsecond=0)
    db[mongo.ENROLLMENTS].insert_many([{
        "_id": f"enr-bulk-{n:05d}", "trial_id": "TRIAL-CARDIO-01", "participant_id": f"P-BULK{n:05d}",
        "email": f"bulk{n}@example.org", "status": "active", "consent_electronic_reports": True,
        "updated_at": same} for n in range(250)])
    leaver = db[mongo.SUBSCRIPTIONS].find_one({"_id": seeded.subscription_ids[0]})
    db[mongo.ENROLLMENTS].update_one({"trial_id": leaver["trial_id"], "participant_id": leaver["participant_id"]},
                                     {"$set": {"status": "withdrawn", "updated_at": same + timedelta(seconds=1)}})
    for _ in range(4):
        cursor = tick(definitions, instance, cursor).cursor
    assert db[mongo.SUBSCRIPTIONS].find_one({"_id": leaver["_id"]})["status"] == "inactive"


def test_sensor_work_per_tick_is_bounded_and_nothing_is_left_behind(pipeline, instance, monkeypatch):
    # 100 new subscriptions, 40 a tick at most: the shape of a thousand at 400 (mongomock scans the enrollments
    # on every lookup, so a thousand took ~20 s).
    monkeypatch.setattr(sensors, "SUBSCRIPTION_CHANGES_PER_TICK", 40)
    db = pipeline.db
    db[mongo.TRIALS].insert_one({"_id": "TRIAL-CARDIO-01", "name": "Cardio"})
    db[mongo.ENROLLMENTS].insert_many([{
        "_id": f"enr-{n}", "trial_id": "TRIAL-CARDIO-01", "participant_id": f"P-{n:05d}",
        "email": f"p{n}@example.org", "status": "active", "consent_electronic_reports": True,
        "updated_at": datetime.now(UTC)} for n in range(100)])
    for n in range(100):
        subscribe(db, "TRIAL-CARDIO-01", f"P-{n:05d}")
    definitions, cursor, per_tick, asked = pipeline.definitions(), None, [], set()
    while db[mongo.SUBSCRIPTIONS].count_documents({"status": "pending"}):
        before = db[mongo.SUBSCRIPTIONS].count_documents({"status": "active"})
        result = tick(definitions, instance, cursor)
        cursor = result.cursor
        new_runs = {r.run_key for r in result.run_requests} - asked  # the daemon launches a run key once
        asked |= new_runs
        per_tick.append((db[mongo.SUBSCRIPTIONS].count_documents({"status": "active"}) - before, len(new_runs)))
    print(f"\nsubscription sensor: 100 new subscriptions validated in {len(per_tick)} ticks "
          f"(activated, runs requested per tick: {per_tick})")
    assert [a for a, _ in per_tick] == [40, 40, 20]
    assert all(runs <= 8 for _, runs in per_tick)


def test_withdrawn_enrollment_deactivates_its_subscriptions_and_stops_emails(pipeline, instance):
    db = pipeline.db
    seeded = seed(db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=6, weeks=1, now=NOW)
    definitions = pipeline.definitions()
    cursor = tick(definitions, instance).cursor
    leaver = db[mongo.SUBSCRIPTIONS].find_one({"_id": seeded.subscription_ids[1]})
    db[mongo.ENROLLMENTS].update_one({"trial_id": leaver["trial_id"], "participant_id": leaver["participant_id"]},
                                     {"$set": {"status": "withdrawn", "updated_at": datetime.now(UTC)}})
    tick(definitions, instance, cursor)
    assert db[mongo.SUBSCRIPTIONS].find_one({"_id": leaver["_id"]})["status"] == "inactive"
    run_weekly_cycle(definitions, instance, NOW)
    assert leaver["email"] not in {m["To"] for m in pipeline.outbox.messages}
    assert len(pipeline.outbox.messages) == 5


def test_subscribe_via_api_first_report_email_then_one_click_unsubscribe_stops_next_week(
        pipeline, instance, monkeypatch):
    # The newcomer subscribes a week before NOW: the first report is for the week of 9 Nov, the next for 16 Nov.
    monkeypatch.setattr(sensors, "utcnow", lambda: NOW - timedelta(days=7))
    db = pipeline.db
    seed(db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=5, now=NOW)
    enroll(db, "P-NEWCOMER", email="newcomer@example.org")
    api = TestClient(create_app(lambda: db, JwtSettings(SECRET, "HS256", ISSUER, AUDIENCE)))
    created = api.post("/v1/subscriptions", json={"trial_id": "TRIAL-CARDIO-01"}, headers=auth(sub="P-NEWCOMER"))
    assert created.status_code == 201 and created.json()["status"] == "pending"
    definitions = pipeline.definitions()

    # The sensor validates it and asks for the first report at once, for the last complete week.
    first = tick(definitions, instance)
    assert [r.tags["report/week"] for r in first.run_requests] == ["2026-11-09"]
    run_requests(definitions, instance, first.run_requests)
    _, delivery_cursor = run_weekly_cycle(definitions, instance, NOW, skip_schedule=True)
    assert [m["To"] for m in pipeline.outbox.messages] == ["newcomer@example.org"]
    email = pipeline.outbox.messages[0]
    assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = email["List-Unsubscribe"].strip("<>")
    assert link in email.get_body(("plain",)).get_content()

    # One click, as the mail client's Unsubscribe button does it.
    path = urlparse(link).path
    assert "<form" in api.get(path).text
    assert api.post(path, data={"List-Unsubscribe": "One-Click"}).json() == {"status": "unsubscribed"}

    # Next week everyone else gets a report; the newcomer gets nothing.
    before = len(pipeline.outbox.messages)
    run_weekly_cycle(definitions, instance, NOW, sensor_cursor=delivery_cursor)
    next_week = [m["To"] for m in pipeline.outbox.messages[before:]]
    assert len(next_week) == 5 and "newcomer@example.org" not in next_week


def test_a_week_with_a_dst_change_is_scheduled_and_aggregated_in_the_report_timezone(tmp_path):
    # Clocks go back in Berlin on Sunday 25 Oct 2026; the schedule fires Monday 26 Oct 02:00 local.
    code = """
import json
from datetime import datetime, UTC
from dagster import build_schedule_context
from reporting_pipeline.defs.definitions import defs
from reporting_pipeline.stages.aggregate import summarize
from reporting_pipeline.weeks import Week
schedule = defs.resolve_schedule_def("weekly_reports_schedule")
tick = schedule.evaluate_tick(build_schedule_context(scheduled_execution_time=datetime(2026, 10, 26, 1, 0, tzinfo=UTC),
                                                     repository_def=defs.get_repository_def()))
week = Week.from_key("2026-10-19", "Europe/Berlin")
records = [  # local times: Mon 19 Oct 00:30, Sun 25 Oct 23:30 (after the change), Mon 26 Oct 00:30
    {"record_id": "a", "recorded_at": datetime(2026, 10, 18, 22, 30, tzinfo=UTC), "metric": "w", "value": 1.0,
     "unit": "kg", "ref_low": None, "ref_high": None},
    {"record_id": "b", "recorded_at": datetime(2026, 10, 25, 22, 30, tzinfo=UTC), "metric": "w", "value": 3.0,
     "unit": "kg", "ref_low": None, "ref_high": None},
    {"record_id": "c", "recorded_at": datetime(2026, 10, 25, 23, 30, tzinfo=UTC), "metric": "w", "value": 99.0,
     "unit": "kg", "ref_low": None, "ref_high": None},
]
summary, daily, adherence = summarize(records, week)
print(json.dumps({"schedule_tz": schedule.execution_timezone,
                  "weeks": sorted({r.tags["report/week"] for r in tick.run_requests}),
                  "runs": len(tick.run_requests), "hours": (week.end_utc - week.start_utc).total_seconds() / 3600,
                  "count": int(summary["count"][0]), "mean": float(summary["mean"][0]), "adherence": adherence,
                  "days": [str(d) for d in daily["day"]]}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "REPORT_TIMEZONE": "Europe/Berlin"}).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["schedule_tz"] == "Europe/Berlin"
    assert result["weeks"] == ["2026-10-19"] and result["runs"] == 8
    assert result["hours"] == 169  # the week is one hour longer
    assert (result["count"], result["mean"], result["adherence"]) == (2, 2.0, 2)
    assert result["days"] == ["2026-10-19", "2026-10-25"]

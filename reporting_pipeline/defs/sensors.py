"""Sensors: delivery after rendering, redrive of failed work, and the alert when redrive gives up."""

import hashlib
import json
import os
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from dagster import (
    AssetKey,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    run_failure_sensor,
    sensor,
)

from reporting_pipeline import mongo as collections
from reporting_pipeline.notify import SmtpSession, compose_alert
from reporting_pipeline.sharding import shard_of
from reporting_pipeline.subscribe import ACTIVE, PENDING, deactivate_for_enrollment, revalidate
from reporting_pipeline.weeks import as_utc, last_complete_week
from reporting_pipeline.redrive import mark_launched, pending_requests, queue_transient_redrives

from .jobs import report_delivery_job, weekly_reports_job
from .partitions import REPORT_SHARDS, REPORT_TIMEZONE, report_partition_key, split_partition_key
from .resources import MongoResource, SmtpResource

# Bounded work per tick; the cursor (or the pending state) carries the rest to the next tick.
EVENTS_PER_TICK = 500
SUBSCRIPTION_CHANGES_PER_TICK = 1000
REDRIVE_MAX_ATTEMPTS = int(os.environ.get("REPORT_REDRIVE_MAX_ATTEMPTS", 3))
REDRIVE_BASE_DELAY = timedelta(seconds=int(os.environ.get("REPORT_REDRIVE_BASE_DELAY_SECONDS", 300)))
REDRIVE_MAX_DELAY = timedelta(hours=6)
REDRIVE_LOOKBACK = timedelta(days=14)
PARTITION_TAG = "dagster/partition"
RUN_KEY_TAG = "dagster/run_key"


def utcnow() -> datetime:
    """The sensors' clock (tests move it)."""
    return datetime.now(UTC)


def only_subscribers(subscription_ids: list[str]) -> dict:
    """Run config restricting a report run to these subscribers of its shard (see FetchConfig)."""
    return {"ops": {"fetched_records": {"config": {"subscription_ids": list(subscription_ids)}}}}


def _partition_tags(partition: str) -> dict:
    week, shard = split_partition_key(partition)
    return {"report/week": week, "report/shard": shard}


@sensor(job=report_delivery_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def report_delivery_sensor(context: SensorEvaluationContext) -> SensorResult:
    """One delivery run per `report_pdfs` materialization, in order, none skipped."""
    result = context.instance.fetch_materializations(
        AssetKey("report_pdfs"), limit=EVENTS_PER_TICK, cursor=context.cursor, ascending=True
    )
    requests = [
        RunRequest(run_key=f"deliver:{record.partition_key}:{record.storage_id}", partition_key=record.partition_key,
                   tags=_partition_tags(record.partition_key))
        for record in result.records
        if record.partition_key is not None
    ]
    return SensorResult(run_requests=requests, cursor=result.cursor if result.records else context.cursor)


def redrive_delay(attempts_so_far: int) -> timedelta:
    """Growing wait before the next redrive: 5 min, 20 min, 80 min, ... at most 6 h."""
    return min(REDRIVE_MAX_DELAY, REDRIVE_BASE_DELAY * 4 ** attempts_so_far)


def _failed_partition_requests(context: SensorEvaluationContext, now: datetime) -> list[RunRequest]:
    requests = []
    for job in (weekly_reports_job.name, report_delivery_job.name):
        failed = context.instance.get_run_records(
            RunsFilter(job_name=job, statuses=[DagsterRunStatus.FAILURE], updated_after=now - REDRIVE_LOOKBACK),
            limit=200,
        )
        seen = set()
        for record in failed:
            partition = record.dagster_run.tags.get(PARTITION_TAG)
            if not partition or partition in seen:
                continue
            seen.add(partition)
            latest = context.instance.get_run_records(
                RunsFilter(job_name=job, tags={PARTITION_TAG: partition}), limit=1)[0]
            if latest.dagster_run.status != DagsterRunStatus.FAILURE:
                continue  # a newer run succeeded or is on its way (e.g. the daemon's run retry)
            attempts = context.instance.get_runs_count(
                RunsFilter(job_name=job, tags={PARTITION_TAG: partition, "report/redrive": "partition"}))
            if attempts >= REDRIVE_MAX_ATTEMPTS:
                continue  # stays failed; partition_failure_alert_sensor told the operators
            failed_at = latest.end_time or latest.update_timestamp.timestamp()
            if now.timestamp() - failed_at < redrive_delay(attempts).total_seconds():
                continue
            requests.append(RunRequest(
                job_name=job, partition_key=partition, run_key=f"redrive:{job}:{partition}:{attempts + 1}",
                tags={**_partition_tags(partition), "report/redrive": "partition",
                      "report/redrive_attempt": str(attempts + 1)},
            ))
    return requests


def _queued_requests(context: SensorEvaluationContext, mongo: MongoResource, now: datetime) -> list[RunRequest]:
    db = mongo.get_db()
    queue_transient_redrives(db, REPORT_SHARDS, now=now, max_redrives=REDRIVE_MAX_ATTEMPTS, delay=redrive_delay)
    requests = []
    for queued in pending_requests(db, limit=100):
        run_key = f"redrive-request:{queued['_id']}"
        launched = context.instance.get_runs(RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
        if launched:  # requested on an earlier tick and now a run: done
            mark_launched(db, queued["_id"], launched[0].run_id)
            continue
        partition = report_partition_key(queued["week"], queued["shard"])
        is_reports = queued["job"] == "reports"
        requests.append(RunRequest(
            job_name=weekly_reports_job.name if is_reports else report_delivery_job.name,
            partition_key=partition,
            run_key=run_key,
            run_config=only_subscribers(queued["subscription_ids"]) if is_reports else {},
            tags={"report/week": queued["week"], "report/shard": queued["shard"], "report/redrive": "request"},
        ))
    return requests


@sensor(jobs=[weekly_reports_job, report_delivery_job], minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING)
def redrive_sensor(context: SensorEvaluationContext, mongo: MongoResource) -> SensorResult:
    """The dead-letter queue's consumer: re-runs failed partitions and transient dead letters (capped, growing
    delay) and redrives queued by operators or reconciliation."""
    now = utcnow()
    return SensorResult(run_requests=_failed_partition_requests(context, now) + _queued_requests(context, mongo, now))


@run_failure_sensor(monitored_jobs=[weekly_reports_job, report_delivery_job],
                    default_status=DefaultSensorStatus.RUNNING)
def partition_failure_alert_sensor(context: RunFailureSensorContext, smtp: SmtpResource) -> None:
    """Email OPS_EMAIL when a partition failed for the last time redrive will try."""
    run = context.dagster_run
    partition = run.tags.get(PARTITION_TAG, "-")
    attempts = int(run.tags.get("report/redrive_attempt", 0))
    if partition != "-" and attempts < REDRIVE_MAX_ATTEMPTS:
        return  # redrive_sensor will try again
    to = os.environ.get("OPS_EMAIL")
    if not to:
        context.log.warning(f"{run.job_name} failed for {partition} and OPS_EMAIL is not set: no alert sent")
        return
    settings = smtp.settings()
    reason = context.failure_event.message or "run failed"
    with SmtpSession(settings) as session:
        session.send(compose_alert(to=to, email_from=settings.email_from, job=run.job_name, partition=partition,
                                   run_id=run.run_id, attempts=attempts, reason=reason,
                                   ui_url=os.environ.get("DAGSTER_UI_URL", "http://localhost:3000")))


def _first_report_requests(activated: dict[str, list[str]], now: datetime) -> list[RunRequest]:
    """One run per shard touched, restricted to the newly active subscribers, for the last complete week."""
    week = last_complete_week(now, REPORT_TIMEZONE).key
    requests = []
    for shard, ids in sorted(activated.items()):
        digest = hashlib.sha256(",".join(sorted(ids)).encode()).hexdigest()[:16]
        requests.append(RunRequest(
            job_name=weekly_reports_job.name,
            partition_key=report_partition_key(week, shard),
            run_key=f"first-report:{week}:{shard}:{digest}",
            run_config=only_subscribers(sorted(ids)),
            tags={"report/week": week, "report/shard": shard, "report/first_report": "true"},
        ))
    return requests


@sensor(jobs=[weekly_reports_job], minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def subscription_sensor(context: SensorEvaluationContext, mongo: MongoResource) -> SensorResult:
    """Validates new and changed subscriptions, asks for first reports, and follows enrollment withdrawals."""
    db = mongo.get_db()
    now = utcnow()
    # Pending subscriptions are found through the (status, updated_at) index: no scan, and whatever a
    # tick leaves pending is simply picked up by the next one.
    pending = db[collections.SUBSCRIPTIONS].find({"status": PENDING}).sort("updated_at", 1).limit(
        SUBSCRIPTION_CHANGES_PER_TICK)
    activated: dict[str, list[str]] = defaultdict(list)
    outcomes: dict[str, int] = defaultdict(int)
    for doc in pending:
        status, _ = revalidate(db, doc, now)
        outcomes[status] += 1
        if status == ACTIVE:
            activated[shard_of(doc["_id"], REPORT_SHARDS)].append(doc["_id"])

    # Enrollment changes since the cursor (inclusive: re-reading a change is harmless).
    state = json.loads(context.cursor) if context.cursor else {}
    since = datetime.fromisoformat(state["enrollments"]) if state.get("enrollments") else datetime(1970, 1, 1, tzinfo=UTC)
    changed = list(db[collections.ENROLLMENTS].find({"updated_at": {"$gte": since}}).sort("updated_at", 1).limit(
        SUBSCRIPTION_CHANGES_PER_TICK))
    for enrollment in changed:
        if enrollment.get("status") != "active" or not enrollment.get("consent_electronic_reports"):
            outcomes["deactivated"] += deactivate_for_enrollment(
                db, enrollment["trial_id"], enrollment["participant_id"], now)
    if changed:
        state["enrollments"] = as_utc(changed[-1]["updated_at"]).isoformat()
    if outcomes:
        context.log.info(f"subscriptions: {dict(outcomes)}")
    return SensorResult(run_requests=_first_report_requests(activated, now), cursor=json.dumps(state))

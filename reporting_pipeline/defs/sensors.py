"""Sensors: delivery after rendering, redrive of failed work, and the alert when redrive gives up."""

import os
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

from reporting_pipeline.notify import SmtpSession, compose_alert
from reporting_pipeline.redrive import mark_launched, pending_requests, queue_transient_redrives

from .jobs import report_delivery_job, weekly_reports_job
from .partitions import REPORT_SHARDS, report_partition_key, split_partition_key
from .resources import MongoResource, SmtpResource

# Bounded work per tick; the cursor carries the rest to the next tick.
EVENTS_PER_TICK = 500
REDRIVE_MAX_ATTEMPTS = int(os.environ.get("REPORT_REDRIVE_MAX_ATTEMPTS", 3))
REDRIVE_BASE_DELAY = timedelta(seconds=int(os.environ.get("REPORT_REDRIVE_BASE_DELAY_SECONDS", 300)))
REDRIVE_MAX_DELAY = timedelta(hours=6)
REDRIVE_LOOKBACK = timedelta(days=14)
PARTITION_TAG = "dagster/partition"
RUN_KEY_TAG = "dagster/run_key"


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
            run_config={"ops": {"fetched_records": {"config": {"subscription_ids": queued["subscription_ids"]}}}}
            if is_reports else {},
            tags={"report/week": queued["week"], "report/shard": queued["shard"], "report/redrive": "request"},
        ))
    return requests


@sensor(jobs=[weekly_reports_job, report_delivery_job], minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING)
def redrive_sensor(context: SensorEvaluationContext, mongo: MongoResource) -> SensorResult:
    """The dead-letter queue's consumer: re-runs failed partitions and transient dead letters (capped, growing
    delay) and redrives queued by operators or reconciliation."""
    now = datetime.now(UTC)
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

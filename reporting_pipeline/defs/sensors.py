"""Sensors: delivery after rendering, redrive of failed work, the alert when redrive gives up, and subscriptions."""


import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from bson import json_util
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

from reporting_pipeline.operations.heal import undelivered_partitions
from reporting_pipeline.operations.redrive import (
    mark_launched,
    pending_requests,
    queue_first_report,
    queue_transient_redrives,
)
from reporting_pipeline.services import mongo as collections
from reporting_pipeline.services.mail import SmtpSession
from reporting_pipeline.settings import Settings
from reporting_pipeline.sharding import shard_of
from reporting_pipeline.stages.notify import compose_alert
from reporting_pipeline.stages.subscribe import (
    ACTIVE,
    PENDING,
    apply_validation,
    deactivate_for_enrollment,
    validate_pending,
)
from reporting_pipeline.weeks import as_utc, last_complete_week

from .assets import PDFS, only_subscribers
from .jobs import report_delivery_job, weekly_reports_job
from .partitions import report_partition_key, split_partition_key
from .resources import MongoResource, SmtpResource
from .runs import DELIVERY, PARTITION_TAG, job_for, latest_run, run_kind

# Bounded work per tick; the cursor (or the pending state) carries the rest to the next tick.
EVENTS_PER_TICK = 500
SUBSCRIPTION_CHANGES_PER_TICK = 1000
REDRIVE_MAX_DELAY = timedelta(hours=6)
REDRIVE_LOOKBACK = timedelta(days=14)
RUN_KEY_TAG = "dagster/run_key"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
IN_FLIGHT = (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
             DagsterRunStatus.STARTED)


def utcnow() -> datetime:
    """The sensors' clock (tests move it)."""
    return datetime.now(UTC)


def _partition_tags(partition: str) -> dict:
    week, shard = split_partition_key(partition)
    return {"report/week": week, "report/shard": shard}


def redrive_delay(attempts_so_far: int, base: timedelta) -> timedelta:
    """Growing wait before the next redrive: base, 4x, 16x, ... (5 min, 20 min, 80 min by default), at most 6 h."""
    return min(REDRIVE_MAX_DELAY, base * 4 ** attempts_so_far)


def _queued_requests(context: SensorEvaluationContext, db, *, first_reports: bool) -> list[RunRequest]:
    """One run per pending queued request; a request whose run exists is marked launched."""
    requests = []
    for queued in pending_requests(db, limit=100, first_reports=first_reports):
        run_key = f"redrive-request:{queued['_id']}"
        launched = context.instance.get_runs(RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
        if launched:  # requested on an earlier tick and now a run: done
            mark_launched(db, queued["_id"], launched[0].run_id)
            continue
        is_reports = queued["job"] == "reports"
        tags = {"report/week": queued["week"], "report/shard": queued["shard"]}
        tags.update({"report/first_report": "true"} if first_reports else {"report/redrive": "request"})
        requests.append(RunRequest(
            job_name=weekly_reports_job.name if is_reports else report_delivery_job.name,
            partition_key=report_partition_key(queued["week"], queued["shard"]),
            run_key=run_key,
            run_config=only_subscribers(queued["subscription_ids"]) if is_reports else {},
            tags=tags,
        ))
    return requests


def report_sensors(settings: Settings) -> list:
    """The pipeline's sensors, with the deployment's redrive policy, shards and week timezone."""

    @sensor(job=report_delivery_job, minimum_interval_seconds=settings.sensor_interval_seconds,
            default_status=DefaultSensorStatus.RUNNING)
    def report_delivery_sensor(context: SensorEvaluationContext) -> SensorResult:
        """One delivery run per `report_pdfs` materialization, in order, none skipped."""
        result = context.instance.fetch_materializations(
            AssetKey(PDFS), limit=EVENTS_PER_TICK, cursor=context.cursor, ascending=True
        )
        requests = [
            RunRequest(run_key=f"deliver:{record.partition_key}:{record.storage_id}",
                       partition_key=record.partition_key, tags=_partition_tags(record.partition_key))
            for record in result.records
            if record.partition_key is not None
        ]
        return SensorResult(run_requests=requests, cursor=result.cursor if result.records else context.cursor)

    def failed_partition_requests(context: SensorEvaluationContext, now: datetime) -> list[RunRequest]:
        """Failed (week, shard) partitions, however their runs were launched (schedule, sensor, UI, backfill)."""
        requests = []
        failed = context.instance.get_run_records(
            RunsFilter(statuses=[DagsterRunStatus.FAILURE], updated_after=now - REDRIVE_LOOKBACK), limit=500)
        seen = set()
        for record in failed:
            kind, partition = run_kind(record.dagster_run), record.dagster_run.tags.get(PARTITION_TAG)
            if kind is None or not partition or (kind, partition) in seen:
                continue
            seen.add((kind, partition))
            latest = latest_run(context.instance, partition, kind)
            if latest.dagster_run.status != DagsterRunStatus.FAILURE:
                continue  # a newer run succeeded or is on its way (e.g. the daemon's run retry)
            job = job_for(kind)
            attempts = context.instance.get_runs_count(
                RunsFilter(job_name=job, tags={PARTITION_TAG: partition, "report/redrive": "partition"}))
            if attempts >= settings.redrive_max_attempts:
                continue  # stays failed; partition_failure_alert_sensor told the operators
            failed_at = latest.end_time or latest.update_timestamp.timestamp()
            if now.timestamp() - failed_at < redrive_delay(attempts, settings.redrive_base_delay).total_seconds():
                continue
            requests.append(RunRequest(
                job_name=job, partition_key=partition, run_key=f"redrive:{job}:{partition}:{attempts + 1}",
                tags={**_partition_tags(partition), "report/redrive": "partition",
                      "report/redrive_attempt": str(attempts + 1)},
            ))
        return requests

    def heal_requests(context: SensorEvaluationContext, db, now: datetime) -> list[RunRequest]:
        """A delivery run for each partition with reports nobody is emailing (see reporting_pipeline.operations.heal)."""
        requests = []
        for (week, shard), waiting in sorted(undelivered_partitions(db, now).items()):
            partition = str(report_partition_key(week, shard))
            latest = latest_run(context.instance, partition, DELIVERY)
            if latest is not None and latest.dagster_run.status in IN_FLIGHT:
                continue  # a delivery run is on its way; it takes these reports
            healed = context.instance.get_runs_count(RunsFilter(
                job_name=report_delivery_job.name, tags={PARTITION_TAG: partition, "report/heal": "delivery"}))
            context.log.info(f"week {week} shard {shard}: {waiting} report(s) not emailed; launching delivery")
            requests.append(RunRequest(
                job_name=report_delivery_job.name, partition_key=partition,
                run_key=f"heal-delivery:{partition}:{healed + 1}",
                tags={**_partition_tags(partition), "report/heal": "delivery"},
            ))
        return requests

    @sensor(jobs=[weekly_reports_job, report_delivery_job], minimum_interval_seconds=60,
            default_status=DefaultSensorStatus.RUNNING)
    def redrive_sensor(context: SensorEvaluationContext, mongo: MongoResource) -> SensorResult:
        """The dead-letter queue's consumer: re-runs failed partitions and transient dead letters (capped, growing
        delay), redrives queued by operators or reconciliation, and delivery for reports nobody is emailing."""
        now = utcnow()
        db = mongo.get_db()
        queue_transient_redrives(db, settings.shards, now=now, max_redrives=settings.redrive_max_attempts,
                                 delay=lambda n: redrive_delay(n, settings.redrive_base_delay))
        return SensorResult(run_requests=failed_partition_requests(context, now)
                            + _queued_requests(context, db, first_reports=False)
                            + heal_requests(context, db, now))

    # Every job of the code location: UI materializations and backfills run as Dagster's asset job.
    @run_failure_sensor(default_status=DefaultSensorStatus.RUNNING)
    def partition_failure_alert_sensor(context: RunFailureSensorContext, smtp: SmtpResource) -> None:
        """Email OPS_EMAIL when a partition failed for the last time redrive will try."""
        run = context.dagster_run
        if run_kind(run) is None:
            return  # not a report or delivery run
        partition = run.tags.get(PARTITION_TAG, "-")
        attempts = int(run.tags.get("report/redrive_attempt", 0))
        if partition != "-" and attempts < settings.redrive_max_attempts:
            return  # redrive_sensor will try again
        if not settings.ops_email:
            context.log.warning(f"{run.job_name} failed for {partition} and OPS_EMAIL is not set: no alert sent")
            return
        smtp_settings = smtp.settings()
        reason = context.failure_event.message or "run failed"
        with SmtpSession(smtp_settings) as session:
            session.send(compose_alert(to=settings.ops_email, email_from=smtp_settings.email_from, job=run.job_name,
                                       partition=partition, run_id=run.run_id, attempts=attempts, reason=reason,
                                       ui_url=settings.dagster_ui_url))

    @sensor(jobs=[weekly_reports_job], minimum_interval_seconds=settings.sensor_interval_seconds,
            default_status=DefaultSensorStatus.RUNNING)
    def subscription_sensor(context: SensorEvaluationContext, mongo: MongoResource) -> SensorResult:
        """Validates new and changed subscriptions, asks for first reports, and follows enrollment withdrawals."""
        db = mongo.get_db()
        now = utcnow()
        # Pending subscriptions are found through the (status, updated_at) index: no scan, and whatever a
        # tick leaves pending is simply picked up by the next one.
        pending = list(db[collections.SUBSCRIPTIONS].find({"status": PENDING}).sort("updated_at", 1).limit(
            SUBSCRIPTION_CHANGES_PER_TICK))
        decisions = [(doc, validate_pending(db, doc)) for doc in pending]
        # First reports are queued before anyone is marked active: a tick that fails in between leaves
        # them pending, validated again next time, never active without their first report.
        week = last_complete_week(now, settings.timezone).key
        activated: dict[str, list[str]] = defaultdict(list)
        for doc, (status, _, _) in decisions:
            if status == ACTIVE:
                activated[shard_of(doc["_id"], settings.shards)].append(doc["_id"])
        for shard, ids in sorted(activated.items()):
            queue_first_report(db, week=week, shard=shard, subscription_ids=ids)
        outcomes: dict[str, int] = defaultdict(int)
        for doc, decision in decisions:
            apply_validation(db, doc, decision, now)
            outcomes[decision[0]] += 1

        # Enrollment changes after the cursor, in (updated_at, _id) order: a bulk update giving thousands
        # of enrollments one timestamp is read across ticks, never re-read forever.
        state = json.loads(context.cursor) if context.cursor else {}
        since = datetime.fromisoformat(state["enrollments"]) if state.get("enrollments") else EPOCH
        after = {"$or": [{"updated_at": {"$gt": since}}]}
        if "enrollment_id" in state:
            after["$or"].append({"updated_at": since, "_id": {"$gt": json_util.loads(state["enrollment_id"])}})
        else:
            after["$or"].append({"updated_at": since})
        changed = list(db[collections.ENROLLMENTS].find(after).sort([("updated_at", 1), ("_id", 1)]).limit(
            SUBSCRIPTION_CHANGES_PER_TICK))
        for enrollment in changed:
            if enrollment.get("status") != "active" or not enrollment.get("consent_electronic_reports"):
                outcomes["deactivated"] += deactivate_for_enrollment(
                    db, enrollment["trial_id"], enrollment["participant_id"], now)
        if changed:
            state["enrollments"] = as_utc(changed[-1]["updated_at"]).isoformat()
            state["enrollment_id"] = json_util.dumps(changed[-1]["_id"])
        if outcomes:
            context.log.info(f"subscriptions: {dict(outcomes)}")
        return SensorResult(run_requests=_queued_requests(context, db, first_reports=True), cursor=json.dumps(state))

    return [report_delivery_sensor, redrive_sensor, partition_failure_alert_sensor, subscription_sensor]

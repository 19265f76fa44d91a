"""Maintenance: daily report retention, then S3/MongoDB reconciliation with a consistency check."""

import os
from datetime import UTC, datetime, timedelta

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    DefaultScheduleStatus,
    MaterializeResult,
    ScheduleDefinition,
    asset,
    asset_check,
    define_asset_job,
)

from reporting_pipeline.reconcile import ReconcileReport, reconcile
from reporting_pipeline.retain import INTERMEDIATE_PREFIX, sweep

from .jobs import RUN_RETRY_TAGS
from .partitions import REPORT_TIMEZONE
from .resources import MongoResource, ReportSettingsResource, S3Resource

GROUP = "maintenance"
SAMPLES_IN_LOG = 5


def _reconcile(mongo: MongoResource, s3: S3Resource, report_settings: ReportSettingsResource,
               repair: bool) -> ReconcileReport:
    return reconcile(mongo.get_db(), s3.get_client(), s3.bucket, now=datetime.now(UTC), repair=repair,
                     encryption=s3.encryption(), retention=timedelta(days=report_settings.retention_days))


def _log_samples(log, report: ReconcileReport) -> None:
    for kind, count in report.found.items():
        if count:
            log.warning(f"{kind}: {count}, e.g. {', '.join(report.samples[kind][:SAMPLES_IN_LOG])}")


@asset(group_name=GROUP)
def report_retention(
    context: AssetExecutionContext, mongo: MongoResource, s3: S3Resource, report_settings: ReportSettingsResource
) -> MaterializeResult:
    """Reports past REPORT_RETENTION_DAYS and week-old step outputs deleted; their records marked expired."""
    days = report_settings.retention_days
    prefix = (os.environ.get("IO_MANAGER_S3_PREFIX") or INTERMEDIATE_PREFIX).strip("/") + "/"
    result = sweep(mongo.get_db(), s3.get_client(), s3.bucket, now=datetime.now(UTC), days=days,
                   intermediate_prefix=prefix)
    context.log.info(f"retention {days} days: {result.as_metadata()}")
    return MaterializeResult(metadata={**result.as_metadata(), "retention_days": days})


# After retention: a report it is deleting must not look like a missing object here.
@asset(group_name=GROUP, deps=[report_retention])
def storage_reconciliation(
    context: AssetExecutionContext, mongo: MongoResource, s3: S3Resource, report_settings: ReportSettingsResource
) -> MaterializeResult:
    """S3 objects and MongoDB metadata compared; orphans, missing and changed objects repaired where possible."""
    report = _reconcile(mongo, s3, report_settings, repair=True)
    _log_samples(context.log, report)
    context.log.info(f"reconciliation: {report.as_metadata()}")
    return MaterializeResult(metadata=report.as_metadata())


@asset_check(asset=storage_reconciliation, description="No drift between S3 and MongoDB is left unrepaired.")
def storage_is_consistent(
    context: AssetCheckExecutionContext, mongo: MongoResource, s3: S3Resource, report_settings: ReportSettingsResource
) -> AssetCheckResult:
    report = _reconcile(mongo, s3, report_settings, repair=False)
    _log_samples(context.log, report)
    return AssetCheckResult(passed=report.clean, metadata=report.as_metadata())


maintenance_job = define_asset_job(
    "maintenance_job",
    selection=[report_retention, storage_reconciliation],
    description="Expire old reports and step outputs, then reconcile S3 with MongoDB.",
    tags=RUN_RETRY_TAGS,  # every step is idempotent, so a run retried after its pod died is safe
)

maintenance_schedule = ScheduleDefinition(
    name="maintenance_schedule",
    job=maintenance_job,
    cron_schedule="0 4 * * *",  # daily, after the Monday 02:00 report runs have had time to finish
    execution_timezone=REPORT_TIMEZONE,
    default_status=DefaultScheduleStatus.RUNNING,
)

MAINTENANCE_ASSETS = [report_retention, storage_reconciliation]
MAINTENANCE_CHECKS = [storage_is_consistent]
MAINTENANCE_JOBS = [maintenance_job]
MAINTENANCE_SCHEDULES = [maintenance_schedule]

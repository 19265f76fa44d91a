"""Maintenance: daily report retention, then S3/MongoDB reconciliation with a consistency check."""

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

from reporting_pipeline.operations.reconcile import ReconcileReport, reconcile
from reporting_pipeline.operations.retain import sweep
from reporting_pipeline.settings import Settings

from .jobs import RUN_RETRY_TAGS
from .resources import MongoResource, S3Resource

GROUP = "maintenance"


def _log_findings(log, report: ReconcileReport) -> None:
    # Counts only: object keys name trials and participants, and Dagster's event log is no place for
    # them. `reporting-pipeline reconcile` shows an operator sample keys in their own terminal.
    for kind, count in report.found.items():
        if count:
            log.warning(f"{kind}: {count} (sample keys: `reporting-pipeline reconcile`)")


def maintenance_definitions(settings: Settings) -> dict:
    """Assets, check, job and schedule of the daily maintenance, with the deployment's retention and grace."""

    def run_reconcile(mongo: MongoResource, s3: S3Resource, repair: bool) -> ReconcileReport:
        return reconcile(mongo.get_db(), s3.get_client(), s3.bucket, now=datetime.now(UTC), repair=repair,
                         grace=timedelta(hours=settings.orphan_grace_hours), encryption=s3.encryption(),
                         retention=timedelta(days=settings.retention_days))

    @asset(group_name=GROUP)
    def report_retention(context: AssetExecutionContext, mongo: MongoResource, s3: S3Resource) -> MaterializeResult:
        """Reports past REPORT_RETENTION_DAYS deleted; their records marked expired."""
        days = settings.retention_days
        result = sweep(mongo.get_db(), s3.get_client(), s3.bucket, now=datetime.now(UTC), days=days)
        context.log.info(f"retention {days} days: {result.as_metadata()}")
        return MaterializeResult(metadata={**result.as_metadata(), "retention_days": days})

    # After retention: a report it is deleting must not look like a missing object here.
    @asset(group_name=GROUP, deps=[report_retention])
    def storage_reconciliation(context: AssetExecutionContext, mongo: MongoResource, s3: S3Resource) -> MaterializeResult:
        """S3 objects and MongoDB metadata compared; orphans, missing and changed objects repaired where possible."""
        report = run_reconcile(mongo, s3, repair=True)
        _log_findings(context.log, report)
        context.log.info(f"reconciliation: {report.as_metadata()}")
        return MaterializeResult(metadata=report.as_metadata())

    @asset_check(asset=storage_reconciliation, description="No drift between S3 and MongoDB is left unrepaired.")
    def storage_is_consistent(context: AssetCheckExecutionContext, mongo: MongoResource,
                              s3: S3Resource) -> AssetCheckResult:
        report = run_reconcile(mongo, s3, repair=False)
        _log_findings(context.log, report)
        return AssetCheckResult(passed=report.clean, metadata=report.as_metadata())

    maintenance_job = define_asset_job(
        "maintenance_job",
        selection=[report_retention, storage_reconciliation],
        description="Expire old reports, then reconcile S3 with MongoDB.",
        tags=RUN_RETRY_TAGS,  # every step is idempotent, so a run retried after its pod died is safe
    )
    maintenance_schedule = ScheduleDefinition(
        name="maintenance_schedule",
        job=maintenance_job,
        cron_schedule="0 4 * * *",  # daily, after the Monday 02:00 report runs have had time to finish
        execution_timezone=settings.timezone,
        default_status=DefaultScheduleStatus.RUNNING,
    )
    return {"assets": [report_retention, storage_reconciliation], "asset_checks": [storage_is_consistent],
            "jobs": [maintenance_job], "schedules": [maintenance_schedule]}

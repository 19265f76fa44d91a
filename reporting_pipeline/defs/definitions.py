"""Definitions: the assets, jobs, schedule, sensor and resources of the reporting pipeline."""

from __future__ import annotations

import os
import tempfile

from dagster import Definitions, EnvVar

from reporting_pipeline import settings

from .assets import aggregated_tables, fetched_records, report_deliveries, report_pdfs
from .io_manager import FilesystemBatchIOManager, S3BatchIOManager
from .jobs import report_delivery_job, weekly_reports_job
from .maintenance import MAINTENANCE_ASSETS, MAINTENANCE_CHECKS, MAINTENANCE_JOBS, MAINTENANCE_SCHEDULES
from .resources import MongoResource, ReportSettingsResource, S3Resource, SmtpResource
from .schedules import weekly_reports_schedule
from .sensors import partition_failure_alert_sensor, redrive_sensor, report_delivery_sensor, subscription_sensor


def _env(name: str, default=None):
    """EnvVar when the variable is set (the UI then shows its name, never its value), else the default."""
    return EnvVar(name) if os.environ.get(name) else default


def _env_int(name: str, default: int):
    return EnvVar.int(name) if os.environ.get(name) else default


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def build_resources() -> dict:
    """Resources from the environment, read at load time."""
    s3 = S3Resource(
        bucket=_env("REPORTS_BUCKET", "clinical-reports"),
        endpoint_url=_env("AWS_ENDPOINT_URL"),
        region=_env("AWS_REGION"),
        sse=_env("REPORTS_SSE", "AES256"),
        kms_key_id=_env("REPORTS_KMS_KEY_ID"),
        create_bucket=_flag("REPORTS_CREATE_BUCKET"),
    )
    if os.environ.get("IO_MANAGER_S3_PREFIX"):
        io_manager = S3BatchIOManager(s3=s3, prefix=os.environ["IO_MANAGER_S3_PREFIX"])
    else:
        base = os.environ.get("IO_MANAGER_BASE_DIR") or os.path.join(
            os.environ.get("DAGSTER_HOME") or tempfile.gettempdir(), "reporting-io"
        )
        io_manager = FilesystemBatchIOManager(base_dir=base)
    return {
        "mongo": MongoResource(uri=_env("MONGODB_URI", "mongodb://localhost:27017"),
                               database=_env("MONGODB_DATABASE", "reporting")),
        "s3": s3,
        "smtp": SmtpResource(
            host=_env("SMTP_HOST", "localhost"),
            port=_env_int("SMTP_PORT", 25),
            username=_env("SMTP_USERNAME"),
            password=_env("SMTP_PASSWORD"),
            starttls=_flag("SMTP_STARTTLS"),
            email_from=_env("EMAIL_FROM", "reports@localhost"),
        ),
        "report_settings": ReportSettingsResource(
            link_ttl_hours=settings.link_ttl_hours(),
            batch_size=settings.batch_size(),
            retention_days=settings.retention_days(),
            worker_processes=settings.worker_processes(),
            delivery_lease_seconds=settings.delivery_lease_seconds(),
            unsubscribe_url=os.environ.get("REPORT_UNSUBSCRIBE_URL", "http://localhost:8080/v1/unsubscribe"),
        ),
        "batch_io_manager": io_manager,
    }


def build_definitions() -> Definitions:
    return Definitions(
        assets=[fetched_records, aggregated_tables, report_pdfs, report_deliveries, *MAINTENANCE_ASSETS],
        asset_checks=MAINTENANCE_CHECKS,
        jobs=[weekly_reports_job, report_delivery_job, *MAINTENANCE_JOBS],
        schedules=[weekly_reports_schedule, *MAINTENANCE_SCHEDULES],
        sensors=[report_delivery_sensor, redrive_sensor, partition_failure_alert_sensor, subscription_sensor],
        resources=build_resources(),
    )


defs = build_definitions()

"""Definitions: the assets, jobs, schedules, sensors and resources of the reporting pipeline."""

from __future__ import annotations

import os

from dagster import Definitions, EnvVar, in_process_executor

from reporting_pipeline.services import retry
from reporting_pipeline.settings import Settings, variable_of

from .assets import report_assets
from .jobs import report_delivery_job, weekly_reports_job
from .maintenance import maintenance_definitions
from .resources import MongoResource, NoStoredOutputs, S3Resource, SmtpResource
from .schedules import report_schedule
from .sensors import report_sensors


def _secret(settings: Settings, field: str):
    """EnvVar when the value came from its variable (the UI then shows the name, never the value)."""
    value = getattr(settings, field)
    name = variable_of(field)
    return EnvVar(name) if value and os.environ.get(name) == value else value


def build_resources(settings: Settings) -> dict:
    return {
        "mongo": MongoResource(uri=_secret(settings, "mongodb_uri"), database=settings.mongodb_database),
        "s3": S3Resource(bucket=settings.reports_bucket, endpoint_url=settings.aws_endpoint_url,
                         region=settings.aws_region, sse=settings.reports_sse, kms_key_id=settings.reports_kms_key_id,
                         create_bucket=settings.reports_create_bucket),
        "smtp": SmtpResource(host=settings.smtp_host, port=settings.smtp_port,
                             username=_secret(settings, "smtp_username"), password=_secret(settings, "smtp_password"),
                             starttls=settings.smtp_starttls, email_from=settings.email_from,
                             max_messages_per_second=settings.smtp_max_messages_per_second,
                             dkim_selector=settings.dkim_selector, dkim_domain=settings.dkim_domain,
                             dkim_private_key=_secret(settings, "dkim_private_key")),
        "io_manager": NoStoredOutputs(),
    }


def build_definitions(settings: Settings | None = None) -> Definitions:
    """The whole Dagster side of one deployment; `settings` default to the environment's."""
    settings = settings or Settings.from_env()
    retry.configure(retry.Backoff.from_settings(settings))  # this process's in-step retries
    maintenance = maintenance_definitions(settings)
    return Definitions(
        assets=[*report_assets(settings), *maintenance["assets"]],
        asset_checks=maintenance["asset_checks"],
        jobs=[weekly_reports_job, report_delivery_job, *maintenance["jobs"]],
        schedules=[report_schedule(settings), *maintenance["schedules"]],
        sensors=report_sensors(settings),
        resources=build_resources(settings),
        # One run, one process (one pod), for every job, Dagster's asset job of UI backfills included:
        # a run's steps execute in the run worker itself. Killed, the run dies whole, its worker
        # processes with it. A step process outliving its run (the multiprocess executor) could write
        # materializations after the run was marked failed and leave the run's retry nothing to run.
        executor=in_process_executor,
    )


defs = build_definitions()

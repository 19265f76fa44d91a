"""Which runs build or deliver a (week, shard), however they were launched.

A partition is built by `weekly_reports_job` (schedule, sensors, CLI) or by Dagster's own asset job
when someone materializes or backfills the assets from the UI (`__ASSET_JOB`, with the selected
assets on the run). Status, redrive and alerts look at both.
"""

from __future__ import annotations

from dagster import DagsterInstance, DagsterRun, RunsFilter

from .assets import AGGREGATED, DELIVERIES, FETCHED, PDFS
from .jobs import report_delivery_job, weekly_reports_job

PARTITION_TAG = "dagster/partition"
REPORTS, DELIVERY = "reports", "delivery"
_REPORT_ASSETS = {FETCHED, AGGREGATED, PDFS}


def run_kind(run: DagsterRun) -> str | None:
    """REPORTS for a run that builds reports, DELIVERY for one that emails them, None for anything else."""
    if run.job_name == weekly_reports_job.name:
        return REPORTS
    if run.job_name == report_delivery_job.name:
        return DELIVERY
    selected = {key.to_user_string() for key in (run.asset_selection or ())}
    if selected & _REPORT_ASSETS:
        return REPORTS
    if DELIVERIES in selected:
        return DELIVERY
    return None


def job_for(kind: str) -> str:
    return weekly_reports_job.name if kind == REPORTS else report_delivery_job.name


def latest_run(instance: DagsterInstance, partition: str, kind: str, scan: int = 50):
    """The newest run record of `kind` for a partition key ('shard|week'), or None."""
    for record in instance.get_run_records(RunsFilter(tags={PARTITION_TAG: partition}), limit=scan):
        if run_kind(record.dagster_run) == kind:
            return record
    return None

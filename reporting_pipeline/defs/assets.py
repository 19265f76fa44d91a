"""Assets: fetched_records -> aggregated_tables -> report_pdfs -> report_deliveries, per (week, shard)."""


import os
import time
import uuid
from datetime import timedelta
from functools import partial

from dagster import AssetExecutionContext, Backoff, Config, Jitter, MaterializeResult, RetryPolicy, asset

from reporting_pipeline.aggregate import aggregate_many, record_aggregation
from reporting_pipeline.fetch import download_in_worker, iter_subscriber_batches
from reporting_pipeline.notify import deliver_shard
from reporting_pipeline.store import PublishSummary, publish_batch, render_many
from reporting_pipeline.weeks import Week
from reporting_pipeline.workers import WorkerPool, lookahead

from .io_manager import BatchStream
from .partitions import REPORT_SHARDS, REPORT_TIMEZONE, report_partitions_def, split_partition_key
from .resources import MongoResource, ReportSettingsResource, S3Resource, SmtpResource

GROUP = "weekly_reports"
# Step-level retries cover what fails a whole step (the subscription cursor, the IO manager, a breaker
# trip during an outage); per-subscriber calls retry inside the step (reporting_pipeline.retry).
STEP_RETRY = RetryPolicy(max_retries=3, delay=float(os.environ.get("REPORT_STEP_RETRY_DELAY_SECONDS", 10)),
                         backoff=Backoff.EXPONENTIAL, jitter=Jitter.FULL)


def _week_and_shard(context: AssetExecutionContext) -> tuple[Week, str]:
    week_key, shard_id = split_partition_key(context.partition_key)
    return Week.from_key(week_key, REPORT_TIMEZONE), shard_id


class FetchConfig(Config):
    """Restrict a run to some subscribers of the shard (a redrive); empty means all of them."""

    subscription_ids: list[str] = []


@asset(partitions_def=report_partitions_def, group_name=GROUP, io_manager_key="batch_io_manager",
       retry_policy=STEP_RETRY)
def fetched_records(
    context: AssetExecutionContext,
    config: FetchConfig,
    mongo: MongoResource,
    s3: S3Resource,
    report_settings: ReportSettingsResource,
) -> BatchStream:
    """Each active subscriber of the shard with the week's records and file bytes, streamed in batches."""
    week, shard_id = _week_and_shard(context)
    db, client = mongo.get_db(), s3.get_client()
    stats = {"subscribers": 0, "records": 0, "files": 0, "issues": 0}

    def batches():
        # File downloads run in worker processes: boto3 spends CPU on every request, and this
        # process's GIL is busy with the MongoDB queries.
        fetch_files = partial(download_in_worker, s3.endpoint_url, s3.region, s3.bucket)
        with WorkerPool(report_settings.worker_processes) as pool:
            pool.prepare(fetch_files)
            for batch in iter_subscriber_batches(db, client, s3.bucket, week, shard_id, REPORT_SHARDS,
                                                 report_settings.batch_size, only=config.subscription_ids,
                                                 download=partial(pool.map, fetch_files)):
                stats["subscribers"] += len(batch)
                stats["records"] += sum(len(b.records) for b in batch)
                stats["files"] += sum(len(b.files) for b in batch)
                stats["issues"] += sum(len(b.issues) for b in batch)
                context.log.info(f"fetched {stats['subscribers']} subscribers of week {week.key} shard {shard_id}")
                yield batch

    return BatchStream(batches(), stats)


@asset(partitions_def=report_partitions_def, group_name=GROUP, io_manager_key="batch_io_manager",
       retry_policy=STEP_RETRY)
def aggregated_tables(
    context: AssetExecutionContext,
    fetched_records: BatchStream,
    mongo: MongoResource,
    report_settings: ReportSettingsResource,
) -> BatchStream:
    """Per-metric summary tables, daily means, adherence, excerpts and thumbnails per subscriber."""
    db = mongo.get_db()
    stats = {"subscribers": 0}
    aggregate = partial(aggregate_many, week_timezone=REPORT_TIMEZONE)

    def batches():
        with WorkerPool(report_settings.worker_processes) as pool:
            pool.prepare(aggregate)
            for batch, pending in lookahead(fetched_records, lambda b: pool.start(aggregate, b)):
                reports = record_aggregation(db, batch, pending.results())
                stats["subscribers"] += len(reports)
                yield reports

    return BatchStream(batches(), stats)


@asset(partitions_def=report_partitions_def, group_name=GROUP, retry_policy=STEP_RETRY)
def report_pdfs(
    context: AssetExecutionContext,
    aggregated_tables: BatchStream,
    mongo: MongoResource,
    s3: S3Resource,
    report_settings: ReportSettingsResource,
) -> MaterializeResult:
    """One encrypted PDF per subscriber in S3, registered in the `reports` collection."""
    db, client = mongo.get_db(), s3.get_client()
    started = time.monotonic()
    total = PublishSummary()
    with WorkerPool(report_settings.worker_processes) as pool:
        pool.prepare(render_many)
        # The pool renders the next batch while this process uploads and registers the last one.
        for batch, pending in lookahead(aggregated_tables, lambda b: pool.start(render_many, b)):
            total.add(publish_batch(db, client, s3.bucket, s3.encryption(), batch, pending.results()))
            context.log.info(f"rendered {total.rendered} reports, {total.failed} failed")
    return MaterializeResult(metadata={**vars(total), "seconds": round(time.monotonic() - started, 3)})


@asset(partitions_def=report_partitions_def, group_name=GROUP, deps=[report_pdfs], retry_policy=STEP_RETRY)
def report_deliveries(
    context: AssetExecutionContext,
    mongo: MongoResource,
    s3: S3Resource,
    smtp: SmtpResource,
    report_settings: ReportSettingsResource,
) -> MaterializeResult:
    """An email with a pre-signed, expiring link for every stored report not emailed yet."""
    week, shard_id = _week_and_shard(context)
    summary = deliver_shard(
        mongo.get_db(), s3.get_client(), s3.bucket, smtp.settings(),
        week=week, shard_id=shard_id, link_ttl_hours=report_settings.link_ttl_hours,
        # One owner per attempt: a retried step must not mistake a claim its dead predecessor held for its own.
        owner=f"{context.run.run_id}:{uuid.uuid4().hex[:8]}",
        unsubscribe_url=report_settings.unsubscribe_url, batch_size=report_settings.batch_size,
        lease=timedelta(seconds=report_settings.delivery_lease_seconds),
        retention_days=report_settings.retention_days, log=context.log,
    )
    context.log.info(f"week {week.key} shard {shard_id}: {summary.as_metadata()}")
    return MaterializeResult(metadata=summary.as_metadata())

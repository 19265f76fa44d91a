"""Assets of one (week, shard): fetched_records -> aggregated_tables -> report_pdfs in one streaming step,
then report_deliveries in a run of its own."""


import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from dagster import (
    AssetExecutionContext,
    AssetSpec,
    Backoff,
    Config,
    DagsterExecutionInterruptedError,
    DagsterRunStatus,
    Failure,
    Jitter,
    MaterializeResult,
    RetryPolicy,
    asset,
    multi_asset,
)

from reporting_pipeline.services.retry import Backoff as RetryBackoff
from reporting_pipeline.settings import Settings
from reporting_pipeline.stages.notify import deliver_shard
from reporting_pipeline.stages.stream import BuildJob, ShardSummary, build_shard
from reporting_pipeline.weeks import Week

from .partitions import report_partitions, split_partition_key
from .resources import MongoResource, S3Resource, SmtpResource

GROUP = "weekly_reports"
BUILD_STEP = "build_reports"
FETCHED, AGGREGATED, PDFS, DELIVERIES = "fetched_records", "aggregated_tables", "report_pdfs", "report_deliveries"
RETRY_ON_STEP_FAILURE_TAG = "dagster/retry_on_asset_or_op_failure"  # Dagster's run tag; jobs set it to false


class BuildConfig(Config):
    """Restrict a run to some subscribers of the shard (a redrive, a first report); empty means all of them."""

    subscription_ids: list[str] = []


def only_subscribers(subscription_ids: list[str]) -> dict:
    """Run config restricting a report run to these subscribers of its shard."""
    return {"ops": {BUILD_STEP: {"config": {"subscription_ids": sorted(subscription_ids)}}}}


@contextmanager
def stop_when_interrupted(context: AssetExecutionContext) -> Iterator[None]:
    """End the step at once when its process is told to stop (SIGTERM: a pod evicted, drained or terminated).

    Dagster turns an interrupt in a step that has a RetryPolicy into a step retry, so the run would go on until
    Kubernetes' SIGKILL 30 s later. Instead the step fails without a retry, and unless someone asked for the run
    to stop (the UI's Terminate: the run ends canceled), the run is tagged so that the daemon retries it from the
    failure, as it retries a run whose process died. Whatever the step had stored stays; the retry does the rest.
    """
    try:
        yield
    except (DagsterExecutionInterruptedError, KeyboardInterrupt) as interrupt:
        run = context.instance.get_run_by_id(context.run_id)
        if run is not None and run.status not in (DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED):
            context.instance.add_run_tags(context.run_id, {RETRY_ON_STEP_FAILURE_TAG: "true"})
        raise Failure("The run's process was told to stop (SIGTERM or Ctrl-C) in the middle of the step; "
                      "reports stored so far stay, a retry of the run does the rest.",
                      allow_retries=False) from interrupt


def report_assets(settings: Settings) -> list:
    """The report assets for a deployment's partitions and knobs."""
    partitions = report_partitions(settings)
    # Step retries cover what fails a whole step (the subscription cursor, a breaker trip during an
    # outage); per-subscriber calls retry inside the step (reporting_pipeline.services.retry).
    step_retry = RetryPolicy(max_retries=3, delay=settings.step_retry_delay_seconds, backoff=Backoff.EXPONENTIAL,
                             jitter=Jitter.FULL)

    def week_and_shard(context: AssetExecutionContext) -> tuple[Week, str]:
        week_key, shard_id = split_partition_key(context.partition_key)
        return Week.from_key(week_key, settings.timezone), shard_id

    @multi_asset(
        name=BUILD_STEP,
        specs=[
            AssetSpec(FETCHED, group_name=GROUP, description="Each active subscriber of the shard with the week's "
                      "records and files (streamed through the step, never stored)."),
            AssetSpec(AGGREGATED, deps=[FETCHED], group_name=GROUP, description="Per-metric summary tables, daily "
                      "means, adherence, excerpts and thumbnails per subscriber (streamed, never stored)."),
            AssetSpec(PDFS, deps=[AGGREGATED], group_name=GROUP,
                      description="One encrypted PDF per subscriber in S3, registered in the `reports` collection."),
        ],
        partitions_def=partitions,
        retry_policy=step_retry,
        can_subset=False,  # one stream: the three stages of a batch happen together or not at all
    )
    def build_reports(context: AssetExecutionContext, config: BuildConfig, mongo: MongoResource, s3: S3Resource):
        """Fetch, aggregate, render and store the week's report of every subscriber of the shard, batch by batch."""
        week, shard_id = week_and_shard(context)
        job = BuildJob(s3.endpoint_url, s3.region, s3.bucket, settings.timezone, RetryBackoff.from_settings(settings))

        def progress(summary: ShardSummary) -> None:
            context.log.info(f"week {week.key} shard {shard_id}: {summary.subscribers} subscribers fetched, "
                             f"{summary.rendered} reports stored, {summary.failed} failed")

        with stop_when_interrupted(context):
            summary = build_shard(mongo.get_db(), s3.get_client(), s3.encryption(), job, week=week,
                                  shard_id=shard_id, shard_count=settings.shards, batch_size=settings.batch_size,
                                  workers=settings.worker_processes, only=config.subscription_ids or None,
                                  progress=progress)
        yield MaterializeResult(asset_key=FETCHED, metadata=summary.fetched_metadata())
        yield MaterializeResult(asset_key=AGGREGATED, metadata=summary.aggregated_metadata())
        yield MaterializeResult(asset_key=PDFS, metadata={**summary.reports_metadata(),
                                                          "workers_started": summary.workers_started})

    @asset(name=DELIVERIES, partitions_def=partitions, group_name=GROUP, deps=[PDFS], retry_policy=step_retry)
    def report_deliveries(context: AssetExecutionContext, mongo: MongoResource, s3: S3Resource,
                          smtp: SmtpResource) -> MaterializeResult:
        """An email with a pre-signed, expiring link for every stored report not emailed yet."""
        week, shard_id = week_and_shard(context)
        with stop_when_interrupted(context):  # a claim held at that moment waits out its lease: no duplicate
            summary = deliver_shard(
                mongo.get_db(), s3.get_client(), s3.bucket, smtp.settings(),
                week=week, shard_id=shard_id, link_ttl_hours=settings.link_ttl_hours,
                # One owner per attempt: a retried step must not mistake a claim its dead predecessor held for its own.
                owner=f"{context.run.run_id}:{uuid.uuid4().hex[:8]}",
                unsubscribe_url=settings.unsubscribe_url, batch_size=settings.batch_size,
                lease=timedelta(seconds=settings.delivery_lease_seconds),
                retention_days=settings.retention_days, log=context.log,
            )
        context.log.info(f"week {week.key} shard {shard_id}: {summary.as_metadata()}")
        return MaterializeResult(metadata=summary.as_metadata())

    return [build_reports, report_deliveries]

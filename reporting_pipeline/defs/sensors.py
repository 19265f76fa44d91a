"""Sensors: launch delivery for every (week, shard) whose reports were just materialized."""

from dagster import AssetKey, DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, sensor

from .jobs import report_delivery_job
from .partitions import split_partition_key

# Bounded work per tick; the cursor carries the rest to the next tick.
EVENTS_PER_TICK = 500


@sensor(job=report_delivery_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def report_delivery_sensor(context: SensorEvaluationContext) -> SensorResult:
    """One delivery run per `report_pdfs` materialization, in order, none skipped."""
    result = context.instance.fetch_materializations(
        AssetKey("report_pdfs"), limit=EVENTS_PER_TICK, cursor=context.cursor, ascending=True
    )
    requests = []
    for record in result.records:
        partition = record.partition_key
        if partition is None:
            continue
        week, shard = split_partition_key(partition)
        requests.append(
            RunRequest(
                run_key=f"deliver:{partition}:{record.storage_id}",
                partition_key=partition,
                tags={"report/week": week, "report/shard": shard},
            )
        )
    return SensorResult(run_requests=requests, cursor=result.cursor if result.records else context.cursor)

"""Schedule stage: every Monday, one run per shard for the week that just ended."""

from datetime import UTC, datetime

from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from reporting_pipeline.settings import Settings
from reporting_pipeline.sharding import shard_ids
from reporting_pipeline.weeks import last_complete_week

from .jobs import weekly_reports_job
from .partitions import report_partition_key


def report_schedule(settings: Settings):
    @schedule(
        name="weekly_reports_schedule",
        job=weekly_reports_job,
        cron_schedule="0 2 * * 1",  # Monday 02:00, once late entries for Sunday have had a chance to sync
        execution_timezone=settings.timezone,
        default_status=DefaultScheduleStatus.RUNNING,
    )
    def weekly_reports_schedule(context: ScheduleEvaluationContext):
        """Request the (last complete week, shard) runs; run keys make a repeated tick launch nothing new."""
        now = context.scheduled_execution_time or datetime.now(UTC)
        week = last_complete_week(now, settings.timezone)
        if week.key < settings.first_week:
            return SkipReason(f"week {week.key} is before the first report week {settings.first_week}")
        return [
            RunRequest(
                run_key=f"weekly:{week.key}:{shard}",
                partition_key=report_partition_key(week.key, shard),
                tags={"report/week": week.key, "report/shard": shard},
            )
            for shard in shard_ids(settings.shards)
        ]

    return weekly_reports_schedule

"""Partitions: one (week, shard) per run, never one per subscriber."""

from __future__ import annotations

from dagster import MultiPartitionKey, MultiPartitionsDefinition, StaticPartitionsDefinition, WeeklyPartitionsDefinition

from reporting_pipeline.settings import Settings
from reporting_pipeline.sharding import shard_ids

# Dagster orders a multi-partition key's dimensions by name: "00|2026-11-16" is shard 00, week 2026-11-16.
DIMENSIONS = ("shard", "week")


def report_partitions(settings: Settings) -> MultiPartitionsDefinition:
    """Weeks (starting on Monday in REPORT_TIMEZONE, from REPORT_FIRST_WEEK) x shards (REPORT_SHARDS)."""
    weeks = WeeklyPartitionsDefinition(start_date=settings.first_week, day_offset=1, timezone=settings.timezone)
    return MultiPartitionsDefinition({"week": weeks, "shard": StaticPartitionsDefinition(shard_ids(settings.shards))})


def report_partition_key(week_key: str, shard_id: str) -> MultiPartitionKey:
    return MultiPartitionKey({"week": week_key, "shard": shard_id})


def split_partition_key(key) -> tuple[str, str]:
    """(week, shard) from a multi-partition key object or its 'shard|week' string form (a run tag)."""
    dims = getattr(key, "keys_by_dimension", None)
    if dims is None:
        parts = str(key).split("|")
        if len(parts) != len(DIMENSIONS):
            raise ValueError(f"not a (week, shard) partition key: {key!r}")
        dims = dict(zip(DIMENSIONS, parts))
    return dims["week"], dims["shard"]

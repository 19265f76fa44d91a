"""Partitions: one (week, shard) per run, never one per subscriber."""

from __future__ import annotations

import os

from dagster import MultiPartitionKey, MultiPartitionsDefinition, StaticPartitionsDefinition, WeeklyPartitionsDefinition

from reporting_pipeline import settings
from reporting_pipeline.sharding import shard_ids

REPORT_TIMEZONE = settings.report_timezone()
REPORT_SHARDS = settings.shard_count()
# The first report week; weeks before it are not offered as partitions.
FIRST_WEEK = os.environ.get("REPORT_FIRST_WEEK", "2025-01-06")

week_partitions_def = WeeklyPartitionsDefinition(
    start_date=FIRST_WEEK, day_offset=1, timezone=REPORT_TIMEZONE  # weeks start on Monday
)
shard_partitions_def = StaticPartitionsDefinition(shard_ids(REPORT_SHARDS))
report_partitions_def = MultiPartitionsDefinition({"week": week_partitions_def, "shard": shard_partitions_def})


def report_partition_key(week_key: str, shard_id: str) -> MultiPartitionKey:
    return MultiPartitionKey({"week": week_key, "shard": shard_id})


def split_partition_key(key: str) -> tuple[str, str]:
    """(week, shard) from a multi-partition key object or its 'shard|week' string form."""
    dims = getattr(key, "keys_by_dimension", None)
    if dims is None:
        dims = report_partitions_def.get_partition_key_from_str(str(key)).keys_by_dimension
    return dims["week"], dims["shard"]

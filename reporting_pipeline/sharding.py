"""Stable assignment of subscriptions to shards.

A shard is a slice of one week's subscribers that one Dagster run processes. The assignment must
be the same in every process and on every machine, so it uses SHA-256, never Python's salted hash().

Each subscription stores a fixed virtual bucket (0..4095); shard i of n holds the buckets b with
b % n == i. The stored value never changes when REPORT_SHARDS does, and selecting a shard is an
indexed `$in` over buckets rather than a computed expression.
"""

from __future__ import annotations

import hashlib

VIRTUAL_BUCKETS = 4096


def shard_bucket(subscription_id: str) -> int:
    """Stable virtual bucket of a subscription id."""
    digest = hashlib.sha256(subscription_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % VIRTUAL_BUCKETS


def shard_width(count: int) -> int:
    """Digits in a shard id, so ids sort the same as numbers."""
    return max(2, len(str(count - 1)))


def _check_count(count: int) -> None:
    if not 1 <= count <= VIRTUAL_BUCKETS:
        raise ValueError(f"shard count must be between 1 and {VIRTUAL_BUCKETS}, got {count}")


def shard_ids(count: int) -> list[str]:
    """All shard ids for a shard count: '00', '01', ..."""
    _check_count(count)
    width = shard_width(count)
    return [f"{i:0{width}d}" for i in range(count)]


def shard_of(subscription_id: str, count: int) -> str:
    """The shard id a subscription belongs to."""
    _check_count(count)
    return f"{shard_bucket(subscription_id) % count:0{shard_width(count)}d}"


def shard_filter(shard_id: str, count: int) -> dict:
    """MongoDB filter selecting one shard's subscriptions by their stored `shard_bucket`."""
    _check_count(count)
    index = int(shard_id)
    if not 0 <= index < count:
        raise ValueError(f"shard {shard_id!r} is outside 0..{count - 1}")
    if count == 1:
        return {}
    return {"shard_bucket": {"$in": list(range(index, VIRTUAL_BUCKETS, count))}}

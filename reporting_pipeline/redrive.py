"""Redrive requests: work to be done again for some subscribers of one (week, shard).

Whoever finds such work (the dead-letter CLI, reconciliation) queues a request in MongoDB; the
redrive sensor turns pending requests into Dagster runs restricted to those subscribers.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo.database import Database

REDRIVE_REQUESTS = "redrive_requests"


def queue_redrive(db: Database, *, week: str, shard: str, subscription_ids: list[str], reason: str) -> str:
    """Queue a re-run of (week, shard) for `subscription_ids`; returns the request id."""
    now = datetime.now(UTC)
    result = db[REDRIVE_REQUESTS].insert_one({
        "week": week,
        "shard": shard,
        "subscription_ids": sorted(set(subscription_ids)),
        "reason": reason,
        "status": "pending",
        "created_at": now,
    })
    return str(result.inserted_id)

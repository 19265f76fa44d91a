"""Redrive: work to be done again for some subscribers of one (week, shard).

Whoever finds such work (the dead-letter CLI, reconciliation) queues a request in MongoDB; the
redrive sensor turns each pending request into one Dagster run restricted to those subscribers, so a
redrive re-does only what is not done yet (delivery never re-sends what the ledger marks sent).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

from bson import ObjectId
from pymongo.database import Database

from . import mongo
from .sharding import shard_of

REDRIVE_REQUESTS = "redrive_requests"
# Which job re-does a failed stage: anything up to storing the PDF needs the report run.
JOB_FOR_STAGE = {"fetch": "reports", "aggregate": "reports", "render": "reports", "store": "reports",
                 "deliver": "delivery"}


def queue_redrive(db: Database, *, week: str, shard: str, subscription_ids: list[str], reason: str,
                  job: str = "reports") -> str:
    """Queue a re-run of (week, shard) for `subscription_ids`; returns the request id."""
    if job not in ("reports", "delivery"):
        raise ValueError(f"job must be 'reports' or 'delivery', got {job!r}")
    result = db[REDRIVE_REQUESTS].insert_one({
        "week": week,
        "shard": shard,
        "job": job,
        "subscription_ids": sorted(set(subscription_ids)),
        "reason": reason,
        "status": "pending",
        "created_at": datetime.now(UTC),
    })
    return str(result.inserted_id)


def open_dead_letters(db: Database, *, week: str | None = None, letter_id: str | None = None,
                      status: str | None = "open") -> list[dict]:
    query: dict = {}
    if status:
        query["status"] = status
    if week:
        query["week"] = week
    if letter_id:
        query["_id"] = ObjectId(letter_id) if ObjectId.is_valid(letter_id) else letter_id
    return list(db[mongo.DEAD_LETTERS].find(query).sort([("week", 1), ("subscription_id", 1), ("stage", 1)]))


def redrive_dead_letters(db: Database, shard_count: int, *, week: str | None = None,
                         letter_id: str | None = None) -> tuple[int, list[str]]:
    """Queue one request per (week, shard, job) covering the open dead letters; returns (letters, request ids)."""
    letters = open_dead_letters(db, week=week, letter_id=letter_id)
    groups: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for letter in letters:
        shard = shard_of(letter["subscription_id"], shard_count)
        groups[(letter["week"], shard, JOB_FOR_STAGE[letter["stage"]])].add(letter["subscription_id"])
    ids = [
        queue_redrive(db, week=w, shard=s, subscription_ids=sorted(subs), reason="dead-letter redrive", job=job)
        for (w, s, job), subs in sorted(groups.items())
    ]
    return len(letters), ids


def resolve_dead_letter(db: Database, letter_id: str, note: str = "") -> bool:
    """Close a dead letter by hand (e.g. the participant withdrew); True if one was open."""
    key = ObjectId(letter_id) if ObjectId.is_valid(letter_id) else letter_id
    result = db[mongo.DEAD_LETTERS].update_one(
        {"_id": key, "status": "open"},
        {"$set": {"status": "resolved", "resolved_at": datetime.now(UTC), "resolved_by": "operator", "note": note}},
    )
    return result.modified_count == 1


def pending_requests(db: Database, limit: int) -> list[dict]:
    return list(db[REDRIVE_REQUESTS].find({"status": "pending"}).sort("created_at", 1).limit(limit))


def mark_launched(db: Database, request_id, run_id: str) -> None:
    db[REDRIVE_REQUESTS].update_one({"_id": request_id, "status": "pending"},
                                    {"$set": {"status": "launched", "run_id": run_id,
                                              "launched_at": datetime.now(UTC)}})

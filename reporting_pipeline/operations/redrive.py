"""Redrive: work to be done again for some subscribers of one (week, shard).

Whoever finds such work (the dead-letter CLI, reconciliation) queues a request in MongoDB; the
redrive sensor turns each pending request into one Dagster run restricted to those subscribers, so a
redrive re-does only what is not done yet (delivery never re-sends what the ledger marks sent).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bson import ObjectId
from pymongo.database import Database

from reporting_pipeline.services import mongo
from reporting_pipeline.sharding import shard_of
from reporting_pipeline.weeks import as_utc

REDRIVE_REQUESTS = "redrive_requests"
# Which job re-does a failed stage: anything up to storing the PDF needs the report run.
JOB_FOR_STAGE = {"fetch": "reports", "aggregate": "reports", "render": "reports", "store": "reports",
                 "deliver": "delivery"}


REDRIVE, FIRST_REPORT = "redrive", "first_report"


def queue_redrive(db: Database, *, week: str, shard: str, subscription_ids: list[str], reason: str,
                  job: str = "reports", kind: str = REDRIVE) -> str:
    """Queue a re-run of (week, shard) for `subscription_ids`; returns the request id."""
    if job not in ("reports", "delivery"):
        raise ValueError(f"job must be 'reports' or 'delivery', got {job!r}")
    result = db[REDRIVE_REQUESTS].insert_one(_request(week, shard, subscription_ids, reason, job, kind))
    return str(result.inserted_id)


def _request(week, shard, subscription_ids, reason, job, kind) -> dict:
    return {"week": week, "shard": shard, "job": job, "kind": kind, "subscription_ids": sorted(set(subscription_ids)),
            "reason": reason, "status": "pending", "created_at": datetime.now(UTC)}


def queue_first_report(db: Database, *, week: str, shard: str, subscription_ids: list[str]) -> str:
    """Queue the first report of newly validated subscribers; the same request asked twice is queued once.

    The subscription sensor queues this before it marks them active, so a tick that fails in between
    leaves them pending (validated again next tick) and never active without their first report.
    """
    ids = sorted(set(subscription_ids))
    request_id = f"{FIRST_REPORT}:{week}:{shard}:" + hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]
    db[REDRIVE_REQUESTS].update_one(
        {"_id": request_id},
        {"$setOnInsert": _request(week, shard, ids, "first report of new subscribers", "reports", FIRST_REPORT)},
        upsert=True)
    return request_id


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


def _queue_letters(db: Database, letters, shard_count: int, reason: str) -> list[tuple[str, list[dict]]]:
    """Queue one request per (week, shard, job) covering `letters`; returns (request id, its letters) pairs."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for letter in letters:
        shard = shard_of(letter["subscription_id"], shard_count)
        groups[(letter["week"], shard, JOB_FOR_STAGE[letter["stage"]])].append(letter)
    return [
        (queue_redrive(db, week=week, shard=shard, subscription_ids=[g["subscription_id"] for g in group],
                       reason=reason, job=job), group)
        for (week, shard, job), group in sorted(groups.items(), key=lambda item: item[0])
    ]


def redrive_dead_letters(db: Database, shard_count: int, *, week: str | None = None,
                         letter_id: str | None = None) -> tuple[int, list[str]]:
    """Queue one request per (week, shard, job) covering the open dead letters; returns (letters, request ids)."""
    letters = open_dead_letters(db, week=week, letter_id=letter_id)
    return len(letters), [rid for rid, _ in _queue_letters(db, letters, shard_count, "dead-letter redrive")]


def queue_transient_redrives(db: Database, shard_count: int, *, now: datetime, max_redrives: int,
                             delay: Callable[[int], timedelta], limit: int = 500) -> list[str]:
    """Queue redrives for open dead letters that failed for a transient reason (an outage, not the data).

    Each letter is redriven at most `max_redrives` times, after `delay(redrives so far)` since it was
    last seen failing; past that it waits for an operator.
    """
    due = []
    for letter in db[mongo.DEAD_LETTERS].find(
            {"status": "open", "transient": True, "redrives": {"$not": {"$gte": max_redrives}}}).limit(limit):
        last_seen = as_utc(letter["last_seen"])
        queued = letter.get("redrive_queued_at")
        if queued is not None and as_utc(queued) >= last_seen:
            continue  # already queued since it last failed
        if now - last_seen >= delay(letter.get("redrives", 0)):
            due.append(letter)
    ids = []
    for request_id, group in _queue_letters(db, due, shard_count, "automatic redrive of transient failures"):
        db[mongo.DEAD_LETTERS].update_many({"_id": {"$in": [g["_id"] for g in group]}},
                                           {"$set": {"redrive_queued_at": now}, "$inc": {"redrives": 1}})
        ids.append(request_id)
    return ids


def resolve_dead_letter(db: Database, letter_id: str, note: str = "") -> bool:
    """Close a dead letter by hand (e.g. the participant withdrew); True if one was open."""
    key = ObjectId(letter_id) if ObjectId.is_valid(letter_id) else letter_id
    result = db[mongo.DEAD_LETTERS].update_one(
        {"_id": key, "status": "open"},
        {"$set": {"status": "resolved", "resolved_at": datetime.now(UTC), "resolved_by": "operator", "note": note}},
    )
    return result.modified_count == 1


def pending_requests(db: Database, limit: int, *, first_reports: bool = False) -> list[dict]:
    """Pending requests, oldest first: first reports (the subscription sensor's) or all others (redrive's)."""
    kind = FIRST_REPORT if first_reports else {"$ne": FIRST_REPORT}
    return list(db[REDRIVE_REQUESTS].find({"status": "pending", "kind": kind}).sort("created_at", 1).limit(limit))


def mark_launched(db: Database, request_id, run_id: str) -> None:
    db[REDRIVE_REQUESTS].update_one({"_id": request_id, "status": "pending"},
                                    {"$set": {"status": "launched", "run_id": run_id,
                                              "launched_at": datetime.now(UTC)}})

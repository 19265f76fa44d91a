"""Dead letters: what could not be done for one subscriber, kept for investigation and redrive.

Two kinds, both upserted so a rerun counts attempts instead of adding rows:
- `dead_letters`: a subscriber got no report or no email this week (stage, error class, message).
- `data_issues`: one item (record, file) was left out of an otherwise delivered report.
Messages never carry health data: they name the problem and the item id, not its content.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import smtplib
import traceback
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from reporting_pipeline.errors import Issue, ReportInputError
from reporting_pipeline.services import mongo
from reporting_pipeline.services.retry import CarriedFailure, call_with_retry, is_pymongo_error, is_transient

if TYPE_CHECKING:
    from pymongo.database import Database

STAGES = ("fetch", "aggregate", "render", "store", "deliver")


# Server replies (SMTP refusals above all) can echo an address back; keep them out of the ledger.
_ADDRESS = re.compile(r"[^\s<>\"'(),;:]+@[^\s<>\"'(),;:]+")


def _describe(error: BaseException) -> tuple[str, str]:
    """(code, message) safe to keep: our own messages are written PHI-free; others are summarised."""
    code = error.code if isinstance(error, (ReportInputError, CarriedFailure)) else type(error).__name__
    if isinstance(error, (ReportInputError, CarriedFailure)):
        message = str(error)
    elif isinstance(error, smtplib.SMTPRecipientsRefused):
        replies = sorted({str(reply[0]) for reply in error.recipients.values()})
        message = f"recipient refused by SMTP server (reply {', '.join(replies)})"
    elif isinstance(error, smtplib.SMTPResponseException):
        message = f"SMTP server replied {error.smtp_code}"
    elif isinstance(error, ClientError):
        info = error.response.get("Error", {})
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = f"S3 {error.operation_name} failed: {info.get('Code')} (HTTP {status})"
    elif is_pymongo_error(error):
        message = f"MongoDB: {str(error)[:200]}"
    else:
        # Anything else (a renderer crash, say) may quote the data it choked on: keep only where it broke.
        frames = traceback.extract_tb(error.__traceback__)
        where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
        message = f"{type(error).__name__}{where}"
    return code, _ADDRESS.sub("<address>", message)[:500]


def carry(value):
    """`value`, or for an exception that would not survive pickling, a CarriedFailure describing it.

    Worker processes return their failures through pickle; this keeps what a dead letter needs.
    """
    if not isinstance(value, BaseException) or isinstance(value, ReportInputError):
        return value
    try:
        pickle.loads(pickle.dumps(value))
        return value
    except Exception:
        code, message = _describe(value)
        return CarriedFailure(type(value).__name__, code, message, is_transient(value), getattr(value, "attempts", 1))


def record_dead_letter(db: Database, *, subscription_id: str, week: str, stage: str, error: BaseException) -> None:
    """Record that `stage` failed for one subscriber and week."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    code, message = _describe(error)
    now = datetime.now(UTC)
    call_with_retry(lambda: mongo.upsert(
        db[mongo.DEAD_LETTERS],
        {"subscription_id": subscription_id, "week": week, "stage": stage},
        {
            "$set": {
                "error_class": getattr(error, "error_class", type(error).__name__),
                "code": code,
                "message": message,
                "transient": is_transient(error),
                "last_seen": now,
                "status": "open",
            },
            "$setOnInsert": {"first_seen": now},
            # Every try counts: those of this run's in-step retries and those of earlier runs.
            "$inc": {"attempts": getattr(error, "attempts", 1)},
        },
    ))


def resolve_dead_letters(db: Database, *, subscription_ids: list[str], week: str, stages: tuple[str, ...]) -> None:
    """Close the open dead letters of these subscribers once a later attempt got past those stages."""
    if not subscription_ids:
        return
    call_with_retry(lambda: db[mongo.DEAD_LETTERS].update_many(
        {"subscription_id": {"$in": list(subscription_ids)}, "week": week, "stage": {"$in": list(stages)},
         "status": "open"},
        {"$set": {"status": "resolved", "resolved_at": datetime.now(UTC)}},
    ))


def data_issue_id(subscription_id: str, week: str, issue: Issue) -> str:
    """The `_id` of one data issue: derived from what identifies it, so that it cannot be recorded twice."""
    digest = hashlib.sha256(f"{issue.ref}\0{issue.code}".encode()).hexdigest()[:32]
    return f"{subscription_id}:{week}:{digest}"


def record_data_issues(db: Database, left_out: list[tuple[str, str, list[Issue]]]) -> None:
    """Record the items left out of some reports, given as (subscription_id, week, issues) per report.

    A batch's issues take a few round trips, however many there are: one query for those recorded before,
    one insert of the new ones, one update of those seen again unchanged (and one per issue whose message
    changed). A report can leave out dozens of items (each diary entry in a script no report font has).
    """
    wanted: dict[str, tuple[str, str, Issue]] = {}
    for subscription_id, week, issues in left_out:
        for issue in issues:
            wanted[data_issue_id(subscription_id, week, issue)] = (subscription_id, week, issue)
    if wanted:
        call_with_retry(lambda: _record_data_issues(db[mongo.DATA_ISSUES], wanted))


def _record_data_issues(collection, wanted: dict[str, tuple[str, str, Issue]]) -> None:
    from pymongo.errors import BulkWriteError

    now = datetime.now(UTC)

    def fields(subscription_id: str, week: str, issue: Issue) -> dict:
        return {"subscription_id": subscription_id, "week": week, "ref": issue.ref, "code": issue.code}

    def content(issue: Issue) -> dict:
        return {"stage": issue.stage, "message": issue.message[:500]}

    # Found by what identifies them, not by `_id`: documents written before `_id` was derived have another.
    recorded = {(d["subscription_id"], d["week"], d["ref"], d["code"]): d for d in collection.find(
        {"subscription_id": {"$in": sorted({s for s, _, _ in wanted.values()})},
         "week": {"$in": sorted({w for _, w, _ in wanted.values()})}},
        {"subscription_id": 1, "week": 1, "ref": 1, "code": 1, "stage": 1, "message": 1})}
    unchanged, changed, new = [], [], []
    for _id, (subscription_id, week, issue) in wanted.items():
        before = recorded.get((subscription_id, week, issue.ref, issue.code))
        if before is None:
            new.append({"_id": _id, **fields(subscription_id, week, issue), **content(issue), "first_seen": now,
                        "last_seen": now})
        elif all(before.get(k) == v for k, v in content(issue).items()):
            unchanged.append(before["_id"])
        else:
            changed.append((subscription_id, week, issue))
    if new:
        try:
            collection.insert_many(new, ordered=False)
        except BulkWriteError as error:
            errors = error.details.get("writeErrors", [])
            if not errors or any(e.get("code") != 11000 for e in errors):
                raise
            # Recorded meanwhile by another run of the same subscribers: brought up to date below.
            changed += [wanted[new[e["index"]]["_id"]] for e in errors]
    if unchanged:
        collection.update_many({"_id": {"$in": unchanged}}, {"$set": {"last_seen": now}})
    for subscription_id, week, issue in changed:
        collection.update_one(fields(subscription_id, week, issue), {"$set": {**content(issue), "last_seen": now}})

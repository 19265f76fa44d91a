"""Dead letters: what could not be done for one subscriber, kept for investigation and redrive.

Two kinds, both upserted so a rerun counts attempts instead of adding rows:
- `dead_letters`: a subscriber got no report or no email this week (stage, error class, message).
- `data_issues`: one item (record, file) was left out of an otherwise delivered report.
Messages never carry health data: they name the problem and the item id, not its content.
"""

from __future__ import annotations

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


def record_data_issues(db: Database, *, subscription_id: str, week: str, issues: list[Issue]) -> None:
    """Record the items left out of one subscriber's report."""
    now = datetime.now(UTC)
    for issue in issues:
        call_with_retry(lambda issue=issue: mongo.upsert(
            db[mongo.DATA_ISSUES],
            {"subscription_id": subscription_id, "week": week, "ref": issue.ref, "code": issue.code},
            {
                "$set": {"stage": issue.stage, "message": issue.message[:500], "last_seen": now},
                "$setOnInsert": {"first_seen": now},
            },
        ))

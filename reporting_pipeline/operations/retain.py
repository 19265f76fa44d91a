"""Retention: reports expire after REPORT_RETENTION_DAYS.

Two layers: an S3 lifecycle rule deletes old objects even if the pipeline never runs again, and the
sweep deletes them itself and marks their `reports` records expired, so MongoDB says what S3 holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from botocore.exceptions import ClientError
from pymongo.database import Database

from reporting_pipeline.compat import batched
from reporting_pipeline.services import mongo
from reporting_pipeline.services.retry import call_with_retry
from reporting_pipeline.weeks import as_utc

MAX_RETENTION_DAYS = 3650
REPORTS_PREFIX = "reports/"
REPORTS_RULE = "expire-reports"


def _check_days(days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_RETENTION_DAYS:
        raise ValueError(f"retention must be a whole number of days between 1 and {MAX_RETENTION_DAYS}, got {days!r}")
    return days


def lifecycle_rules(days: int) -> list[dict]:
    """The pipeline's own lifecycle rules."""
    # In a versioned bucket expiration only adds a delete marker; the old versions must go too.
    noncurrent = {"NoncurrentVersionExpiration": {"NoncurrentDays": 1}}
    return [
        {"ID": REPORTS_RULE, "Filter": {"Prefix": REPORTS_PREFIX}, "Status": "Enabled",
         "Expiration": {"Days": _check_days(days)}, **noncurrent},
    ]


def apply_lifecycle(s3, bucket: str, days: int) -> bool:
    """Put our lifecycle rules on the bucket, keeping everyone else's; True if the configuration changed."""
    ours = lifecycle_rules(days)
    try:
        current = s3.get_bucket_lifecycle_configuration(Bucket=bucket)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
            raise
        current = {}
    existing = current.get("Rules", [])
    rules = [rule for rule in existing if rule.get("ID") not in {r["ID"] for r in ours}] + ours
    if rules == existing:
        return False
    args = {"Bucket": bucket, "LifecycleConfiguration": {"Rules": rules}}
    if "TransitionDefaultMinimumObjectSize" in current:
        args["TransitionDefaultMinimumObjectSize"] = current["TransitionDefaultMinimumObjectSize"]
    s3.put_bucket_lifecycle_configuration(**args)
    return True


def report_written_at(report_doc: dict) -> datetime | None:
    """When a report's object was last written, which its age counts from (retention, link lifetime,
    reconciliation): `rendered_at` moves only when new bytes are written (or else `created_at`)."""
    moment = report_doc.get("rendered_at") or report_doc.get("created_at")
    return None if moment is None else as_utc(moment)


def report_expires_at(report_doc: dict, days: int) -> datetime | None:
    """When a report falls out of retention: written plus `days`; None if that is not known."""
    written = report_written_at(report_doc)
    return None if written is None else written + timedelta(days=days)


@dataclass
class SweepReport:
    reports_expired: int = 0
    report_objects_deleted: int = 0
    delete_errors: int = 0

    def as_metadata(self) -> dict[str, int]:
        return dict(vars(self))


def _delete_keys(s3, bucket: str, keys: list[str]) -> set[str]:
    """Delete objects (absent ones count as deleted); returns the keys S3 refused to delete."""
    if not keys:
        return set()
    result = call_with_retry(lambda: s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True}))
    return {error["Key"] for error in result.get("Errors", [])}


def _expire_reports(db: Database, s3, bucket: str, now: datetime, days: int, page_size: int,
                    report: SweepReport) -> None:
    cutoff = now - timedelta(days=days)
    query = {
        "status": {"$ne": "expired"},
        "$or": [{"rendered_at": {"$lt": cutoff}}, {"rendered_at": None, "created_at": {"$lt": cutoff}}],
    }
    cursor = db[mongo.REPORTS].find(query, {"s3_key": 1}).sort("_id", 1).batch_size(page_size)
    for batch in batched(cursor, page_size):
        keys = [doc["s3_key"] for doc in batch if doc.get("s3_key")]
        refused = _delete_keys(s3, bucket, keys)
        report.report_objects_deleted += len(keys) - len(refused)
        report.delete_errors += len(refused)
        # Object first, record after: a record marked expired never points at an object still there.
        done = [doc["_id"] for doc in batch if doc.get("s3_key") not in refused]
        if done:
            result = db[mongo.REPORTS].update_many({"_id": {"$in": done}, **query},
                                                   {"$set": {"status": "expired", "expired_at": now}})
            report.reports_expired += result.modified_count


def sweep(
    db: Database,
    s3,
    bucket: str,
    *,
    now: datetime,
    days: int,
    page_size: int = 500,
) -> SweepReport:
    """Delete reports past retention, marking their records expired."""
    if not 1 <= page_size <= 1000:
        raise ValueError(f"page_size must be between 1 and 1000 (the S3 batch delete maximum), got {page_size}")
    report = SweepReport()
    _expire_reports(db, s3, bucket, now, _check_days(days), page_size, report)
    return report

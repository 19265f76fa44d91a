"""Reconciliation: compare S3 objects with their MongoDB metadata, report drift, repair what is safe to repair.

Objects under `files/` are matched with the `files` collection, objects under `reports/` with `reports`.
The listing and the cursor (both in key order) are merge-joined page by page, so memory stays O(page).
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from botocore.exceptions import ClientError
from pymongo import ASCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from reporting_pipeline.services import mongo
from reporting_pipeline.services.objectstore import Encryption, is_not_found, list_objects
from reporting_pipeline.services.retry import call_with_retry
from reporting_pipeline.stages.store import DEFINITION_META, LANGUAGE_META, recorded_at_of
from reporting_pipeline.weeks import as_utc

from .redrive import REDRIVE_REQUESTS, queue_redrive
from .retain import report_written_at

FILES_PREFIX = "files/"
REPORTS_PREFIX = "reports/"
FINDINGS = ("orphan_files", "orphan_reports", "missing_files", "missing_reports", "mismatched_files",
            "mismatched_reports")
SAMPLE_LIMIT = 50
IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "gif", "webp"}
MISSING_REASON = "reconcile: report object missing"
CHANGED_REASON = "reconcile: report object changed"
_FILE_KEY = re.compile(r"^files/([^/]+)/([^/]+)/([^/]+)\.([A-Za-z0-9]+)$")
_REPORT_KEY = re.compile(r"^reports/([^/]+)/([^/]+)/([^/]+)\.pdf$")  # reports/<week>/<shard>/<subscription>.pdf
AUDIT = "delivery_audit"
_CHUNK = 1024 * 1024


@dataclass
class ReconcileReport:
    """What one reconciliation pass saw, found and repaired; sample keys only, never contents."""

    objects_scanned: int = 0
    records_scanned: int = 0
    recent_objects: int = 0  # objects without metadata, younger than the grace period
    past_retention: int = 0  # report objects gone with their record past retention (sweep marks those)
    awaiting_rerender: int = 0  # report drift a redrive request since the last render already covers
    repaired: int = 0
    queued_rerenders: int = 0
    found: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINDINGS, 0))
    samples: dict[str, list[str]] = field(default_factory=lambda: {kind: [] for kind in FINDINGS})

    def add(self, kind: str, key: str) -> None:
        self.found[kind] += 1
        if len(self.samples[kind]) < SAMPLE_LIMIT:
            self.samples[kind].append(key)

    @property
    def orphans(self) -> int:
        return self.found["orphan_files"] + self.found["orphan_reports"]

    @property
    def missing(self) -> int:
        return self.found["missing_files"] + self.found["missing_reports"]

    @property
    def mismatched(self) -> int:
        return self.found["mismatched_files"] + self.found["mismatched_reports"]

    @property
    def findings(self) -> int:
        return sum(self.found.values())

    @property
    def unrepaired(self) -> int:
        return self.findings - self.repaired

    @property
    def clean(self) -> bool:
        return self.unrepaired == 0

    def as_metadata(self) -> dict[str, int]:
        return {
            "objects_scanned": self.objects_scanned,
            "records_scanned": self.records_scanned,
            "orphans": self.orphans,
            "missing": self.missing,
            "mismatched": self.mismatched,
            "repaired": self.repaired,
            "unrepaired": self.unrepaired,
            "queued_rerenders": self.queued_rerenders,
            "awaiting_rerender": self.awaiting_rerender,
            "recent_objects": self.recent_objects,
            "past_retention": self.past_retention,
            **self.found,
        }


def _records(db: Database, collection: str, prefix: str, page_size: int, fields: tuple[str, ...]):
    # The upper bound is the prefix with its last character incremented: "files/" -> "files0".
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    query = {"s3_key": {"$gte": prefix, "$lt": upper}, "status": {"$ne": "expired"}}
    projection = dict.fromkeys(("s3_key", *fields), 1)
    return db[collection].find(query, projection).sort("s3_key", ASCENDING).batch_size(page_size)


def _ensure_key_index(db: Database) -> None:
    """`reports` needs an s3_key index for the sorted cursor; `files` has a unique one already."""
    collection = db[mongo.REPORTS]
    if not any(next(iter(info["key"]))[0] == "s3_key" for info in collection.index_information().values()):
        collection.create_index([("s3_key", ASCENDING)], name="s3_key")


def _merge(objects: Iterator[dict], records) -> Iterator[tuple[dict | None, dict | None]]:
    """(object, record) pairs by key: (obj, None) orphan, (None, rec) missing, (obj, rec) matched."""
    obj, rec = next(objects, None), next(records, None)
    last_obj = last_rec = ""
    while obj is not None or rec is not None:
        # The join is only right if both sides come in the same order; stop rather than misreport.
        if (obj is not None and obj["Key"] < last_obj) or (rec is not None and rec["s3_key"] < last_rec):
            raise RuntimeError("S3 listing and MongoDB cursor are not in the same key order")
        if rec is None or obj is not None and obj["Key"] < rec["s3_key"]:
            yield obj, None
            last_obj, obj = obj["Key"], next(objects, None)
        elif obj is None or rec["s3_key"] < obj["Key"]:
            yield None, rec
            last_rec, rec = rec["s3_key"], next(records, None)
        else:
            yield obj, rec
            last_obj, last_rec = obj["Key"], rec["s3_key"]
            obj, rec = next(objects, None), next(records, None)


def _head(s3, bucket: str, key: str) -> dict | None:
    try:
        return call_with_retry(lambda: s3.head_object(Bucket=bucket, Key=key))
    except ClientError as error:
        if is_not_found(error):
            return None
        raise


def _digest(s3, bucket: str, key: str) -> tuple[str, int]:
    """sha256 and size of an object, streamed in chunks."""
    return _digest_and_metadata(s3, bucket, key)[:2]


def _digest_and_metadata(s3, bucket: str, key: str) -> tuple[str, int, dict]:
    """sha256, size and user metadata of an object, streamed in chunks."""
    got = call_with_retry(lambda: s3.get_object(Bucket=bucket, Key=key))
    body = got["Body"]
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: body.read(_CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size, got.get("Metadata") or {}


def _differs(s3, bucket: str, head: dict, rec: dict) -> bool:
    """True if the object's size or sha256 differs from its record."""
    if isinstance(rec.get("size"), int) and head.get("ContentLength") != rec["size"]:
        return True
    if not rec.get("sha256"):
        return False
    recorded = head.get("Metadata", {}).get("sha256")
    if recorded is None:  # not written by put_if_changed: hash the bytes instead
        recorded, _ = _digest(s3, bucket, rec["s3_key"])
    return recorded != rec["sha256"]


def _has_live_record(db: Database, collection: str, key: str) -> bool:
    return db[collection].find_one({"s3_key": key, "status": {"$ne": "expired"}}, {"_id": 1}) is not None


def _delete_object(s3, bucket: str, key: str) -> None:
    call_with_retry(lambda: s3.delete_object(Bucket=bucket, Key=key))


def _rebuild_delivered(db: Database, s3, bucket: str, obj: dict, now: datetime) -> bool:
    """Rebuild the `reports` record of an orphan report object that the delivery ledger refers to; False if none does."""
    match = _REPORT_KEY.match(obj["Key"])
    if not match:
        return False
    week, shard, subscription = match.groups()
    delivery = db[mongo.DELIVERIES].find_one({"_id": f"{subscription}:{week}"})
    audited = db[AUDIT].find_one({"s3_key": obj["Key"]}, {"_id": 1})
    if delivery is None and audited is None:
        return False
    sha256, size, metadata = _digest_and_metadata(s3, bucket, obj["Key"])
    written = as_utc(obj["LastModified"])
    # How it was rendered, as its upload recorded it: its email (if one is still due) keeps the report's language.
    rendered = {"language": metadata.get(LANGUAGE_META) or "en", "definition_version": metadata.get(DEFINITION_META)}
    db[mongo.REPORTS].update_one(
        {"subscription_id": subscription, "week": week},
        {"$set": {"subscription_id": subscription, "week": week, "shard": shard, "s3_key": obj["Key"],
                  "sha256": sha256, "size": size, "rendered_at": written, "rebuilt_at": now, **rendered,
                  **({"delivery_state": "sent"} if delivery and delivery.get("status") == "sent" else {})},
         "$setOnInsert": {"created_at": written}},
        upsert=True)
    return True


def _reregister(db: Database, s3, bucket: str, obj: dict, now: datetime) -> str:
    """Register an orphan file from its key and bytes: "registered", "unparseable" or "id_taken"."""
    match = _FILE_KEY.match(obj["Key"])
    if not match:
        return "unparseable"
    trial_id, participant_id, file_id, extension = match.groups()
    sha256, size = _digest(s3, bucket, obj["Key"])
    # When the participant recorded it, as the upload wrote it on the object; never the upload time
    # (a file recovered today would land in today's report). Unknown: kept out of every report.
    recorded_at = recorded_at_of((_head(s3, bucket, obj["Key"]) or {}).get("Metadata", {}))
    doc = {
        "trial_id": trial_id,
        "participant_id": participant_id,
        "kind": "image" if extension.lower() in IMAGE_EXTENSIONS else "text",
        "content_type": mimetypes.guess_type(f"x.{extension}")[0] or "application/octet-stream",
        "recorded_at": recorded_at,
        "recorded_at_unknown": recorded_at is None,
        "size": size,
        "sha256": sha256,
        "reregistered_at": now,
    }
    try:
        # Matching on s3_key too: a file id already registered under another key is left alone.
        db[mongo.FILES].update_one({"_id": file_id, "s3_key": obj["Key"]}, {"$set": doc}, upsert=True)
    except DuplicateKeyError:
        return "id_taken"
    return "registered"


class _Rerenders:
    """Redrive requests to queue, one per (week, shard); flushed whenever the scan moves past a (week, shard)."""

    def __init__(self, db: Database, report: ReconcileReport):
        self.db = db
        self.report = report
        self.pending: dict[tuple[str, str], tuple[set[str], set[str]]] = {}

    def add(self, rec: dict, reason: str) -> None:
        part = (rec["week"], rec["shard"])
        if part not in self.pending:
            self.flush()  # report keys are sorted by week and shard, so earlier groups are complete
            self.pending[part] = (set(), set())
        subscriptions, reasons = self.pending[part]
        subscriptions.add(rec["subscription_id"])
        reasons.add(reason)

    def flush(self) -> None:
        for (week, shard), (subscriptions, reasons) in sorted(self.pending.items()):
            queue_redrive(self.db, week=week, shard=shard, subscription_ids=sorted(subscriptions),
                          reason="; ".join(sorted(reasons)))
            self.report.queued_rerenders += 1
        self.pending.clear()


def _rerender_requested(db: Database, rec: dict) -> bool:
    """True if a redrive request for this subscriber was queued after its report was last rendered."""
    query = {"week": rec.get("week"), "shard": rec.get("shard"), "subscription_ids": rec.get("subscription_id")}
    if rec.get("rendered_at"):
        query["created_at"] = {"$gt": rec["rendered_at"]}
    return db[REDRIVE_REQUESTS].find_one(query, {"_id": 1}) is not None


def _past_retention(rec: dict, now: datetime, retention: timedelta | None) -> bool:
    written = report_written_at(rec)  # one definition of a report's age, shared with the sweeper and links
    return retention is not None and written is not None and written < now - retention


def reconcile(
    db: Database,
    s3,
    bucket: str,
    *,
    now: datetime,
    grace: timedelta = timedelta(hours=24),
    repair: bool = False,
    page_size: int = 1000,
    encryption: Encryption = Encryption(),  # for repairs that write objects; none does yet
    retention: timedelta | None = None,
) -> ReconcileReport:
    """Compare `files/` and `reports/` objects with their records; with `repair`, fix what can be fixed."""
    if not 1 <= page_size <= 1000:
        raise ValueError(f"page_size must be between 1 and 1000 (the S3 listing maximum), got {page_size}")
    report = ReconcileReport()
    _ensure_key_index(db)
    cutoff = now - grace

    def orphan(obj: dict, kind: str, collection: str) -> bool:
        """Count an old orphan (after checking again that no record appeared); True if it counts."""
        if as_utc(obj["LastModified"]) >= cutoff:
            report.recent_objects += 1  # uploaded first, metadata still to come
            return False
        if _has_live_record(db, collection, obj["Key"]):
            return False
        report.add(kind, obj["Key"])
        return True

    files = _records(db, mongo.FILES, FILES_PREFIX, page_size, ("size", "sha256"))
    for obj, rec in _merge(list_objects(s3, bucket, FILES_PREFIX, page_size), files):
        report.objects_scanned += obj is not None
        report.records_scanned += rec is not None
        if rec is None:
            if orphan(obj, "orphan_files", mongo.FILES) and repair:
                outcome = _reregister(db, s3, bucket, obj, now)
                if outcome == "unparseable":
                    _delete_object(s3, bucket, obj["Key"])
                # A file id registered under another key needs a person: both may hold participant data.
                report.repaired += outcome != "id_taken"
            continue
        head = _head(s3, bucket, rec["s3_key"])  # also confirms a listed-missing object is really gone
        if head is None:
            # Files cannot be recreated from anywhere: left for investigation (fetch refuses them).
            report.add("missing_files", rec["s3_key"])
        elif _differs(s3, bucket, head, rec):
            report.add("mismatched_files", rec["s3_key"])

    rerenders = _Rerenders(db, report)
    fields = ("size", "sha256", "week", "shard", "subscription_id", "rendered_at", "created_at")
    reports = _records(db, mongo.REPORTS, REPORTS_PREFIX, page_size, fields)
    for obj, rec in _merge(list_objects(s3, bucket, REPORTS_PREFIX, page_size), reports):
        report.objects_scanned += obj is not None
        report.records_scanned += rec is not None
        if rec is None:
            if orphan(obj, "orphan_reports", mongo.REPORTS) and repair:
                # A report someone was emailed a link to is never deleted: its record is rebuilt instead
                # (a MongoDB restore to an older snapshot loses records, not the emails already sent).
                if not _rebuild_delivered(db, s3, bucket, obj, now):
                    _delete_object(s3, bucket, obj["Key"])
                report.repaired += 1
            continue
        head = _head(s3, bucket, rec["s3_key"])
        if head is None:
            if _past_retention(rec, now, retention):
                report.past_retention += 1
                continue
            kind, reason = "missing_reports", MISSING_REASON
        elif _differs(s3, bucket, head, rec):
            kind, reason = "mismatched_reports", CHANGED_REASON
        else:
            continue
        if _rerender_requested(db, rec):
            report.awaiting_rerender += 1
            continue
        report.add(kind, rec["s3_key"])
        if repair:
            if kind == "missing_reports":
                # Without its record no email can link to the missing object; the re-render writes both again.
                db[mongo.REPORTS].delete_one({"_id": rec["_id"], "s3_key": rec["s3_key"]})
            rerenders.add(rec, reason)
            report.repaired += 1
    rerenders.flush()
    return report

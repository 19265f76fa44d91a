"""Fetch stage: stream one shard's subscribers from MongoDB in batches, with their week's records and files.

Two halves, so each runs where it is cheapest: `iter_subscriber_batches` queries MongoDB in the run's
process (records and file metadata), `load_files` downloads the file bytes in a worker process, next to
the aggregation and rendering that use them. Memory is bounded by the batch size, never by the shard.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from reporting_pipeline.compat import batched
from reporting_pipeline.errors import (
    ChecksumMismatch,
    FileTooLarge,
    InvalidReportDefinition,
    Issue,
    MalformedRecord,
    MissingObject,
    ReportInputError,
)
from reporting_pipeline.services import mongo
from reporting_pipeline.services.objectstore import is_not_found, sha256_hex
from reporting_pipeline.services.retry import call_with_retry, captured
from reporting_pipeline.sharding import shard_filter
from reporting_pipeline.weeks import Week, as_utc

from .definitions import ReportDefinition, definition_of_trial, trial_default_locale
from .i18n import resolve

if TYPE_CHECKING:
    from pymongo.database import Database

# Larger files are refused before download: no diary note or photo needs more.
MAX_FILE_BYTES = 25 * 1024 * 1024
MAX_LOGO_BYTES = 2 * 1024 * 1024
FILE_THREADS = 8


@dataclass
class FileItem:
    """One participant file with its bytes."""

    file_id: str
    kind: str  # text | image
    recorded_at: datetime
    content_type: str
    data: bytes


@dataclass
class SubscriberWeek:
    """Everything one subscriber's report is built from: this week's and last week's data."""

    subscription_id: str
    email: str
    trial_id: str
    trial_name: str
    participant_id: str
    timezone: str
    week_key: str
    shard_id: str
    records: list[dict] = field(default_factory=list)
    file_metas: list[dict] = field(default_factory=list)  # what `load_files` downloads into `files`
    files: list[FileItem] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    # The report's language (BCP 47): the participant's locale, else the trial's default, else English.
    language: str = "en"
    definition: ReportDefinition | None = None  # None: the built-in report
    # Set when the subscriber cannot be reported on at all (the trial's definition is invalid).
    failure: ReportInputError | None = None
    logo: bytes | None = None  # the definition's logo, downloaded with the files


def _number(value, what: str, ref: str) -> float:
    if value is None:
        raise MalformedRecord(f"record {ref}: {what} is missing", ref)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedRecord(f"record {ref}: {what} is not a number (got {type(value).__name__})", ref)
    number = float(value)
    if not math.isfinite(number):
        raise MalformedRecord(f"record {ref}: {what} is not finite", ref)
    return number


def parse_record(doc: dict) -> dict:
    """Validate one raw `records` document into the shape aggregation expects."""
    ref = str(doc.get("_id", "?"))
    metric = doc.get("metric")
    if not isinstance(metric, str) or not metric.strip():
        raise MalformedRecord(f"record {ref}: metric name is missing", ref)
    recorded_at = doc.get("recorded_at")
    if not isinstance(recorded_at, datetime):
        raise MalformedRecord(f"record {ref}: recorded_at is not a date-time", ref)
    value = _number(doc.get("value"), "value", ref)
    ref_range = doc.get("reference_range") or {}
    if not isinstance(ref_range, dict):
        raise MalformedRecord(f"record {ref}: reference_range is not an object", ref)
    low = ref_range.get("low")
    high = ref_range.get("high")
    low = None if low is None else _number(low, "reference_range.low", ref)
    high = None if high is None else _number(high, "reference_range.high", ref)
    unit = doc.get("unit")
    return {
        "record_id": ref,
        "recorded_at": as_utc(recorded_at),
        "metric": metric.strip(),
        "value": value,
        "unit": unit if isinstance(unit, str) else "",
        "ref_low": low,
        "ref_high": high,
    }


def read_file(s3, bucket: str, meta: dict) -> FileItem:
    """Download one file and check it against its metadata."""
    ref = str(meta["_id"])
    size = meta.get("size")
    if isinstance(size, int) and size > MAX_FILE_BYTES:
        raise FileTooLarge(f"file {ref}: {size} bytes exceeds the {MAX_FILE_BYTES}-byte limit", ref)
    try:
        body = s3.get_object(Bucket=bucket, Key=meta["s3_key"])["Body"]
        data = body.read(MAX_FILE_BYTES + 1)
    except ClientError as error:
        if is_not_found(error):
            raise MissingObject(f"file {ref}: object is missing from S3", ref) from None
        raise
    if len(data) > MAX_FILE_BYTES:
        raise FileTooLarge(f"file {ref}: larger than the {MAX_FILE_BYTES}-byte limit", ref)
    if meta.get("sha256") and sha256_hex(data) != meta["sha256"]:
        raise ChecksumMismatch(f"file {ref}: content does not match its recorded sha256", ref)
    return FileItem(ref, meta.get("kind", ""), as_utc(meta["recorded_at"]), meta.get("content_type", ""), data)


def _shard_query(shard_id: str, shard_count: int, only: list[str] | None) -> dict:
    """One shard's active subscriptions, or just `only` of them."""
    query = {"status": "active", **shard_filter(shard_id, shard_count)}
    if only:
        query["_id"] = {"$in": list(only)}
    return query


def active_subscriptions(db: Database, shard_id: str, shard_count: int, batch_size: int,
                         only: list[str] | None = None):
    """Cursor over one shard's active subscriptions (or just `only` of them), in a stable order."""
    return db[mongo.SUBSCRIPTIONS].find(_shard_query(shard_id, shard_count, only)).sort("_id", 1).batch_size(batch_size)


def count_subscriptions(db: Database, shard_id: str, shard_count: int, only: list[str] | None = None) -> int:
    """How many subscribers `active_subscriptions` will yield (through the same index)."""
    query = _shard_query(shard_id, shard_count, only)
    return call_with_retry(lambda: db[mongo.SUBSCRIPTIONS].count_documents(query))


def download_files(s3, bucket: str, metas: list[dict]) -> list[FileItem | Exception]:
    """Each file's bytes, or its error; on I/O threads (boto3 clients are thread-safe), each retried on its own."""
    if not metas:
        return []
    with ThreadPoolExecutor(max(1, min(FILE_THREADS, len(metas)))) as pool:
        return list(pool.map(lambda m: captured(call_with_retry, lambda: read_file(s3, bucket, m)), metas))


def read_logo(s3, bucket: str, key: str) -> bytes:
    """A definition's logo; a missing or oversized one makes the definition invalid, not the report lesser."""
    try:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read(MAX_LOGO_BYTES + 1)
    except ClientError as error:
        if is_not_found(error):
            raise InvalidReportDefinition(f"report definition is invalid: logo: no object at key {key}") from None
        raise
    if len(data) > MAX_LOGO_BYTES:
        raise InvalidReportDefinition(f"report definition is invalid: logo: larger than {MAX_LOGO_BYTES} bytes")
    return data


def load_files(s3, bucket: str, bundles: list[SubscriberWeek]) -> list[SubscriberWeek | Exception]:
    """Download every bundle's files (one thread pool for the whole batch), and each trial's logo once.

    A file the data makes unusable (missing, too large, changed) becomes an issue of its bundle; any
    other failure (S3 still failing after its retries) fails that subscriber's fetch, not the batch.
    A bundle that failed already (its trial's definition is invalid) downloads nothing.
    """
    usable = [b for b in bundles if b.failure is None]
    logo_keys = sorted({b.definition.logo for b in usable if b.definition and b.definition.logo})
    logos = dict(zip(logo_keys, (captured(call_with_retry, lambda k=k: read_logo(s3, bucket, k)) for k in logo_keys)))
    downloaded = iter(download_files(s3, bucket, [m for b in usable for m in b.file_metas]))
    out = []
    for bundle in bundles:
        if bundle.failure is not None:
            out.append(bundle.failure)
            continue
        logo = logos.get(bundle.definition.logo) if bundle.definition and bundle.definition.logo else None
        results = [next(downloaded) for _ in bundle.file_metas]
        if isinstance(logo, BaseException):
            if isinstance(logo, InvalidReportDefinition):
                logo = InvalidReportDefinition(f"trial {bundle.trial_id}: {logo}", bundle.trial_id)
            out.append(logo)
            continue
        bundle.logo = logo
        failure = next((r for r in results if isinstance(r, BaseException) and not isinstance(r, ReportInputError)),
                       None)
        if failure is not None:
            out.append(failure)
            continue
        bundle.files = [r for r in results if isinstance(r, FileItem)]
        bundle.issues += [Issue.from_error("fetch", r) for r in results if isinstance(r, ReportInputError)]
        bundle.file_metas = []
        out.append(bundle)
    return out


def trial_reports(trials: dict[str, dict]) -> dict[str, tuple[ReportDefinition | None, InvalidReportDefinition | None]]:
    """Each trial's report definition, validated as it is loaded: (definition or None, error or None)."""
    out = {}
    for trial_id, trial in trials.items():
        try:
            out[trial_id] = (definition_of_trial(trial), None)
        except InvalidReportDefinition as error:
            out[trial_id] = (None, error)
    return out


def fetch_batch(db: Database, week: Week, shard_id: str, subscriptions: list[dict]) -> list[SubscriberWeek]:
    """Load records (this and the previous week) and this week's file metadata for a batch of subscriptions.

    Four queries whatever the batch size: trials, enrollments (the participants' locales), records, files.
    """
    participants = sorted({s["participant_id"] for s in subscriptions})
    trial_ids = sorted({s["trial_id"] for s in subscriptions})
    trials = {t["_id"]: t for t in call_with_retry(lambda: list(db[mongo.TRIALS].find({"_id": {"$in": trial_ids}})))}
    reports = trial_reports(trials)
    # The locale is read from the enrollment at every run (not copied onto the subscription): a participant
    # who changes language gets next week's report in it, and subscriptions made before locales existed work.
    enrollment_ids = sorted({s["enrollment_id"] for s in subscriptions if s.get("enrollment_id")}, key=str)
    locales = {e["_id"]: e.get("locale") for e in call_with_retry(lambda: list(
        db[mongo.ENROLLMENTS].find({"_id": {"$in": enrollment_ids}}, {"locale": 1})))} if enrollment_ids else {}
    window = {"$gte": week.previous().start_utc, "$lt": week.end_utc}
    record_docs = call_with_retry(lambda: list(
        db[mongo.RECORDS].find({"participant_id": {"$in": participants}, "recorded_at": window}).sort("_id", 1)))

    records = defaultdict(list)
    raw_issues = defaultdict(list)
    for doc in record_docs:
        owner = (doc.get("trial_id"), doc.get("participant_id"))
        try:
            records[owner].append(parse_record(doc))
        except ReportInputError as error:
            raw_issues[owner].append(Issue.from_error("fetch", error))

    file_query = {
        "participant_id": {"$in": participants},
        "recorded_at": {"$gte": week.start_utc, "$lt": week.end_utc},
    }
    file_metas = defaultdict(list)
    file_docs = call_with_retry(lambda: list(db[mongo.FILES].find(file_query).sort([("recorded_at", 1), ("_id", 1)])))
    for meta in file_docs:
        file_metas[(meta.get("trial_id"), meta.get("participant_id"))].append(meta)

    def language(sub: dict, definition: ReportDefinition | None) -> str:
        default = trial_default_locale(trials.get(sub["trial_id"]), definition)
        return resolve(locales.get(sub.get("enrollment_id")), default, definition.languages if definition else None)

    return [
        SubscriberWeek(
            subscription_id=str(sub["_id"]),
            email=sub.get("email", ""),
            trial_id=sub["trial_id"],
            trial_name=trials.get(sub["trial_id"], {}).get("name", sub["trial_id"]),
            participant_id=sub["participant_id"],
            timezone=sub.get("timezone") or week.timezone,
            week_key=week.key,
            shard_id=shard_id,
            records=records.get((sub["trial_id"], sub["participant_id"]), []),
            file_metas=file_metas.get((sub["trial_id"], sub["participant_id"]), []),
            issues=list(raw_issues.get((sub["trial_id"], sub["participant_id"]), [])),
            language=language(sub, definition),
            definition=definition,
            failure=failure,
        )
        for sub in subscriptions
        for definition, failure in [reports.get(sub["trial_id"], (None, None))]
    ]


def iter_subscriber_batches(
    db: Database, week: Week, shard_id: str, shard_count: int, batch_size: int, only: list[str] | None = None,
) -> Iterator[list[SubscriberWeek]]:
    """Stream a shard's subscribers, one queried batch at a time.

    The next batch is already being queried while this one is handed on, so MongoDB's round trips
    overlap the work on this one: two batches in flight at most, so memory stays bounded.
    """
    cursor = active_subscriptions(db, shard_id, shard_count, batch_size, only)
    fetching = deque()
    with ThreadPoolExecutor(2, thread_name_prefix="fetch-ahead") as ahead:
        # The cursor is read on this thread only: a pymongo cursor is not for sharing between threads.
        for subscriptions in batched(cursor, batch_size):
            fetching.append(ahead.submit(fetch_batch, db, week, shard_id, list(subscriptions)))
            if len(fetching) == 2:
                yield fetching.popleft().result()
        while fetching:
            yield fetching.popleft().result()

"""Store stage: objects go to S3 first, their MongoDB metadata is written only after the upload succeeded."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from datetime import UTC, datetime

from pymongo.database import Database

from . import mongo
from .aggregate import AggregatedReport
from .dead_letters import record_dead_letter, resolve_dead_letters
from .render import render_report
from .retry import Breaker, call_with_retry, captured
from .objectstore import Encryption, put_if_changed, sha256_hex
from .workers import each

PDF = "application/pdf"


def report_key(week_key: str, shard_id: str, subscription_id: str) -> str:
    """Deterministic object key: a rerun of the same (subscription, week) overwrites only itself."""
    return f"reports/{week_key}/{shard_id}/{subscription_id}.pdf"


def file_key(trial_id: str, participant_id: str, file_id: str, extension: str) -> str:
    return f"files/{trial_id}/{participant_id}/{file_id}.{extension.lstrip('.')}"


def store_file(
    db: Database,
    s3,
    bucket: str,
    encryption: Encryption,
    *,
    file_id: str,
    trial_id: str,
    participant_id: str,
    recorded_at: datetime,
    kind: str,
    content_type: str,
    extension: str,
    data: bytes,
) -> dict:
    """Upload a participant file, then register it; safe to repeat."""
    if kind not in ("text", "image"):
        raise ValueError(f"file kind must be 'text' or 'image', got {kind!r}")
    key = file_key(trial_id, participant_id, file_id, extension)
    put_if_changed(s3, bucket, key, data, content_type, encryption)
    doc = {
        "_id": file_id,
        "trial_id": trial_id,
        "participant_id": participant_id,
        "recorded_at": recorded_at,
        "kind": kind,
        "s3_key": key,
        "content_type": content_type,
        "size": len(data),
        "sha256": sha256_hex(data),
    }
    db[mongo.FILES].replace_one({"_id": file_id}, {**doc, "uploaded_at": datetime.now(UTC)}, upsert=True)
    return doc


def store_report(
    db: Database,
    s3,
    bucket: str,
    encryption: Encryption,
    *,
    subscription_id: str,
    week_key: str,
    shard_id: str,
    pdf: bytes,
    pages: int,
    registered: bool = True,
) -> dict:
    """Upload one rendered report (encrypted), then upsert its `reports` record.

    `registered=False` says no `reports` record exists yet, so the object is not looked for first.
    """
    key = report_key(week_key, shard_id, subscription_id)
    written = put_if_changed(s3, bucket, key, pdf, PDF, encryption, look_first=registered)
    now = datetime.now(UTC)
    doc = {
        "subscription_id": subscription_id,
        "week": week_key,
        "shard": shard_id,
        "s3_key": key,
        "sha256": sha256_hex(pdf),
        "size": len(pdf),
        "pages": pages,
    }
    # rendered_at follows the object's age (what S3 lifecycle expiry counts from): it moves only
    # when new bytes were written, so a link is never promised past the object's deletion.
    stamp = {"rendered_at": now} if written else {}
    mongo.upsert(
        db[mongo.REPORTS],
        {"subscription_id": subscription_id, "week": week_key},
        {"$set": {**doc, **stamp}, "$setOnInsert": {"created_at": now, **({} if written else {"rendered_at": now})}},
    )
    return doc


# (pdf, pages) or the exception, per report: the chunk function the render pool runs.
render_many = each(render_report)


@dataclass
class PublishSummary:
    rendered: int = 0
    failed: int = 0
    pages: int = 0
    bytes: int = 0
    empty_weeks: int = 0
    issues: int = 0

    def add(self, other: "PublishSummary") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def publish_batch(db: Database, s3, bucket: str, encryption: Encryption, reports: list[AggregatedReport],
                  rendered: list | None = None, io_threads: int = 8) -> PublishSummary:
    """Store (I/O threads) a rendered batch; one failure is a dead letter, not a stopped batch.

    `rendered` holds one (pdf, pages) or exception per report, from `WorkerPool.start(render_many, ...)`;
    without it the batch is rendered here.
    """
    summary = PublishSummary()
    breaker = Breaker()
    if rendered is None:
        rendered = render_many(reports)

    # A first run has nothing stored: one query spares a HEAD request per report.
    registered = {(d["subscription_id"], d["week"]) for d in call_with_retry(lambda: list(db[mongo.REPORTS].find(
        {"subscription_id": {"$in": [r.subscription_id for r in reports]},
         "week": {"$in": sorted({r.week_key for r in reports})}}, {"subscription_id": 1, "week": 1})))}

    def store(item):
        report, result = item
        pdf, pages = result
        call_with_retry(lambda: store_report(
            db, s3, bucket, encryption, subscription_id=report.subscription_id, week_key=report.week_key,
            shard_id=report.shard_id, pdf=pdf, pages=pages,
            registered=(report.subscription_id, report.week_key) in registered))

    ready = [(r, res) for r, res in zip(reports, rendered) if not isinstance(res, BaseException)]
    with ThreadPoolExecutor(max(1, min(io_threads, len(ready)))) as pool:
        stored = dict(zip((id(r) for r, _ in ready), pool.map(partial(captured, store), ready)))
    for report, result in zip(reports, rendered):
        if isinstance(result, BaseException):
            stage, error = "render", result
        else:
            stage, error = "store", stored[id(report)]
        if error is not None:
            record_dead_letter(db, subscription_id=report.subscription_id, week=report.week_key, stage=stage,
                               error=error)
            summary.failed += 1
            breaker.failed(error)
            continue
        breaker.succeeded()
        resolve_dead_letters(db, subscription_id=report.subscription_id, week=report.week_key,
                             stages=("fetch", "aggregate", "render", "store"))
        pdf, pages = result
        summary.rendered += 1
        summary.pages += pages
        summary.bytes += len(pdf)
        summary.empty_weeks += 0 if report.has_data else 1
        summary.issues += len(report.issues)
    return summary


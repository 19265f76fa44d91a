"""Store stage: objects go to S3 first, their MongoDB metadata is written only after the upload succeeded."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
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
) -> dict:
    """Upload one rendered report (encrypted), then upsert its `reports` record."""
    key = report_key(week_key, shard_id, subscription_id)
    written = put_if_changed(s3, bucket, key, pdf, PDF, encryption)
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


class Renderer:
    """Renders in a process pool sized to the CPU: reportlab is pure Python and holds the GIL.

    One pool serves all batches of a step; `workers=1` renders in this process (tests, small shards).
    """

    def __init__(self, workers: int = 1):
        self.workers = max(1, workers)
        self._pool: ProcessPoolExecutor | None = None

    def render(self, reports: list[AggregatedReport]) -> list[tuple[bytes, int] | BaseException]:
        """One (pdf, pages) or the exception it raised, per report, in order."""
        if self.workers == 1 or len(reports) < 2 * self.workers:
            return [_try_render(r) for r in reports]  # a pool would cost more to start than it saves
        if self._pool is None:
            # spawn, not fork: the step process runs threads (pymongo monitors, boto3) a fork could copy mid-lock.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return list(self._pool.map(_try_render, reports, chunksize=max(1, len(reports) // (self.workers * 4))))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# Returned, not raised: one poison report must not fail the whole map (a partial pickles for the pool).
_try_render = partial(captured, render_report)


def publish_batch(db: Database, s3, bucket: str, encryption: Encryption, reports: list[AggregatedReport],
                  renderer: Renderer | None = None, io_threads: int = 8) -> PublishSummary:
    """Render (process pool) and store (I/O threads) a batch; one failure is a dead letter, not a stopped batch."""
    summary = PublishSummary()
    breaker = Breaker()
    rendered = (renderer or Renderer()).render(reports)

    def store(item):
        report, result = item
        pdf, pages = result
        call_with_retry(lambda: store_report(
            db, s3, bucket, encryption, subscription_id=report.subscription_id, week_key=report.week_key,
            shard_id=report.shard_id, pdf=pdf, pages=pages))

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


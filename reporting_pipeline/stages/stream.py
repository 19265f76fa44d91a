"""The report step: one (week, shard) streamed batch by batch through fetch -> aggregate -> render -> store.

The seed design chains fetch, aggregation and PDF workers through queues. Here one process per run
plays the queues' part: it queries MongoDB for batch N+1 (a fetch-ahead thread) while worker
processes download, aggregate and render batch N, and it stores batch N-1 (S3 first, then MongoDB).
Nothing a participant wrote or measured is written anywhere between the stages: the only outputs
are the report objects and their `reports` records. A subscriber that fails at any stage becomes a
dead letter naming the stage; everyone else in the batch goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from reporting_pipeline.errors import Issue
from reporting_pipeline.operations.dead_letters import (
    carry,
    record_data_issues,
    record_dead_letter,
    resolve_dead_letters,
)
from reporting_pipeline.services import mongo
from reporting_pipeline.services.objectstore import Encryption, make_client
from reporting_pipeline.services.retry import Backoff, Breaker, call_with_retry, captured, configure
from reporting_pipeline.weeks import Week

from .fetch import SubscriberWeek, count_subscriptions, iter_subscriber_batches, load_files
from .store import store_report
from .workers import WorkerPool, lookahead

if TYPE_CHECKING:
    from pymongo.database import Database

BUILD_STAGES = ("fetch", "aggregate", "render", "store")


@dataclass(frozen=True)
class BuildJob:
    """What a worker process needs to build reports (picklable: it travels with every chunk)."""

    endpoint_url: str | None
    region: str | None
    bucket: str
    week_timezone: str
    backoff: Backoff = Backoff()


@dataclass
class Built:
    """One subscriber's rendered report, with what was left out of it."""

    subscription_id: str
    week_key: str
    shard_id: str
    pdf: bytes
    pages: int
    files: int
    has_data: bool
    issues: list[Issue] = field(default_factory=list)
    language: str = "en"  # the language it was rendered in: its email is written in it too
    definition_version: str | None = None  # the report definition that rendered it (None: built-in)


@dataclass
class Failed:
    """One subscriber that could not be built, and the stage where it stopped."""

    subscription_id: str
    week_key: str
    stage: str
    error: BaseException


_CLIENTS: dict[tuple, object] = {}


def _s3(job: BuildJob):
    """One S3 client per process (boto3 clients are thread-safe and costly to make)."""
    key = (job.endpoint_url, job.region)
    if key not in _CLIENTS:
        _CLIENTS[key] = make_client(job.endpoint_url, job.region)
    return _CLIENTS[key]


def prepare(job: BuildJob):
    """What this process needs to build reports: the job's retry settings, and its S3 client (returned; made
    once per process). A worker runs it as it starts (`WorkerPool(warm_up=...)`), and each chunk again."""
    configure(job.backoff)
    return _s3(job)


def build_chunk(job: BuildJob, bundles: list[SubscriberWeek]) -> list[Built | Failed]:
    """Download, aggregate and render some subscribers (in a worker process); one result each, in order."""
    # Imported on first use: workers have them from the forkserver's preload (worker_preload.py), and a run
    # whose shard needs workers never renders itself, so its process need not hold pandas and reportlab.
    from .aggregate import aggregate_many
    from .render import render_report_checked

    loaded = load_files(prepare(job), job.bucket, bundles)
    # One pandas pass for every subscriber whose files arrived.
    aggregated = iter(aggregate_many([b for b in loaded if isinstance(b, SubscriberWeek)], job.week_timezone))
    out: list[Built | Failed] = []
    for bundle, item in zip(bundles, loaded):
        def failed(stage: str, error: BaseException) -> Failed:
            # Worker results cross back through pickle; many client errors do not.
            return Failed(bundle.subscription_id, bundle.week_key, stage, carry(error))

        if isinstance(item, BaseException):
            out.append(failed("fetch", item))
            continue
        report = next(aggregated)
        if isinstance(report, BaseException):
            out.append(failed("aggregate", report))
            continue
        rendered = captured(render_report_checked, report)
        if isinstance(rendered, BaseException):
            out.append(failed("render", rendered))
            continue
        pdf, pages, drawn_with_replacements = rendered  # characters no report font has: visible, and recorded
        out.append(Built(bundle.subscription_id, bundle.week_key, bundle.shard_id, pdf, pages,
                         files=len(bundle.files), has_data=report.has_data,
                         issues=list(report.issues) + drawn_with_replacements,
                         language=report.language, definition_version=report.definition_version))
    return out


@dataclass
class ShardSummary:
    """Counts of one run, per asset of the step. Counts only: no ids, nothing about anyone."""

    subscribers: int = 0
    records: int = 0
    files: int = 0
    fetch_issues: int = 0
    fetch_failed: int = 0
    aggregated: int = 0
    aggregate_issues: int = 0
    aggregate_failed: int = 0
    render_issues: int = 0
    rendered: int = 0
    failed: int = 0  # render or store
    pages: int = 0
    bytes: int = 0
    empty_weeks: int = 0
    batches: int = 0
    workers_started: bool = False

    def fetched_metadata(self) -> dict:
        return {"subscribers": self.subscribers, "records": self.records, "files": self.files,
                "issues": self.fetch_issues, "failed": self.fetch_failed, "batches": self.batches}

    def aggregated_metadata(self) -> dict:
        return {"subscribers": self.aggregated, "issues": self.aggregate_issues, "failed": self.aggregate_failed}

    def reports_metadata(self) -> dict:
        return {"rendered": self.rendered, "failed": self.failed, "pages": self.pages, "bytes": self.bytes,
                "empty_weeks": self.empty_weeks, "issues": self.fetch_issues + self.aggregate_issues,
                "missing_glyphs": self.render_issues}


def publish_batch(db: Database, s3, bucket: str, encryption: Encryption, results: list[Built | Failed],
                  summary: ShardSummary, io_threads: int = 8) -> None:
    """Store a built batch (I/O threads), record what failed and what was left out, count into `summary`."""
    breaker = Breaker()
    built = [r for r in results if isinstance(r, Built)]
    # A first run has nothing stored: one query spares a HEAD request per report.
    registered = {(d["subscription_id"], d["week"]) for d in call_with_retry(lambda: list(db[mongo.REPORTS].find(
        {"subscription_id": {"$in": [r.subscription_id for r in built]},
         "week": {"$in": sorted({r.week_key for r in built})}}, {"subscription_id": 1, "week": 1})))}

    def store(item: Built):
        call_with_retry(lambda: store_report(
            db, s3, bucket, encryption, subscription_id=item.subscription_id, week_key=item.week_key,
            shard_id=item.shard_id, pdf=item.pdf, pages=item.pages, language=item.language,
            definition_version=item.definition_version,
            registered=(item.subscription_id, item.week_key) in registered))

    with ThreadPoolExecutor(max(1, min(io_threads, len(built)))) as pool:
        stored = dict(zip((id(r) for r in built), pool.map(partial(captured, store), built)))
    # What was left out of the built reports, stored or not (a retry rebuilds the same), in one write.
    record_data_issues(db, [(r.subscription_id, r.week_key, r.issues) for r in built if r.issues])

    # Per week, the stored subscribers' dead letters are closed in one write. (Should the breaker trip first,
    # the step's retry stores them again, unchanged, and closes them.)
    stored_ids: dict[str, list[str]] = {}
    for result in results:
        if isinstance(result, Built):
            summary.files += result.files
            summary.fetch_issues += sum(1 for i in result.issues if i.stage == "fetch")
            summary.aggregate_issues += sum(1 for i in result.issues if i.stage == "aggregate")
            summary.render_issues += sum(1 for i in result.issues if i.stage == "render")
            summary.aggregated += 1
            stage, error = "store", stored[id(result)]
        else:
            stage, error = result.stage, result.error
            summary.fetch_failed += stage == "fetch"
            summary.aggregate_failed += stage == "aggregate"
            summary.aggregated += stage in ("render",)
        if error is not None:
            record_dead_letter(db, subscription_id=result.subscription_id, week=result.week_key, stage=stage,
                               error=error)
            summary.failed += stage in ("render", "store")
            breaker.failed(error)  # an outage, not the data: fail the step, let retries take the shard
            continue
        breaker.succeeded()
        stored_ids.setdefault(result.week_key, []).append(result.subscription_id)
        summary.rendered += 1
        summary.pages += result.pages
        summary.bytes += len(result.pdf)
        summary.empty_weeks += 0 if result.has_data else 1
    for week_key, ids in stored_ids.items():
        resolve_dead_letters(db, subscription_ids=ids, week=week_key, stages=BUILD_STAGES)


def build_shard(
    db: Database, s3, encryption: Encryption, job: BuildJob, *, week: Week, shard_id: str, shard_count: int,
    batch_size: int, workers: int, only: list[str] | None = None,
    progress: Callable[[ShardSummary], None] = lambda summary: None,
) -> ShardSummary:
    """Build and store the reports of one (week, shard), or of `only` those of its subscribers."""
    summary = ShardSummary()
    build = partial(build_chunk, job)
    _CLIENTS.setdefault((job.endpoint_url, job.region), s3)  # batches built here use the run's own client

    def begin(batch: list[SubscriberWeek]):
        summary.subscribers += len(batch)
        summary.records += sum(len(b.records) for b in batch)
        summary.batches += 1
        if summary.batches == 1:
            progress(summary)  # the first subscribers are in: what "launch to first subscriber" measures
        return pool.start(build, batch)

    # A shard that fits in one batch is built in this process: starting workers would cost more CPU
    # (about a second and a half for the forkserver's imports) than they could save.
    if count_subscriptions(db, shard_id, shard_count, only) <= batch_size:
        workers = 1
    with WorkerPool(workers, warm_up=partial(prepare, job)) as pool:
        for _batch, pending in lookahead(iter_subscriber_batches(db, week, shard_id, shard_count, batch_size, only),
                                         begin):
            publish_batch(db, s3, job.bucket, encryption, pending.results(), summary)
            progress(summary)
        summary.workers_started = pool.started
    return summary

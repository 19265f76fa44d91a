"""Aggregate stage: turn one subscriber's week of records and files into report-ready tables."""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

# pandas loads numpy, whose OpenBLAS starts a thread per core as it loads (0.1-0.2 CPU-s of every worker server
# and of every run that renders itself) for linear algebra no report does. Read at load: set before the import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import pandas as pd  # noqa: E402

from reporting_pipeline.errors import (
    CorruptImage,
    ImageTooLarge,
    InvalidReportDefinition,
    Issue,
    ReportInputError,
    TextNotUtf8,
    UnitMismatch,
)
from reporting_pipeline.services.objectstore import sha256_hex
from reporting_pipeline.services.retry import captured
from reporting_pipeline.weeks import Week

from .definitions import ReportDefinition
from .fetch import SubscriberWeek
from .images import make_logo, make_thumbnail

SUMMARY_COLUMNS = [
    "metric", "unit", "count", "mean", "min", "max", "previous_mean", "change", "out_of_range", "ref_low", "ref_high",
]
DAILY_COLUMNS = ["metric", "day", "mean"]
MAX_EXCERPT_CHARS = 600
MAX_EXCERPTS = 6
MAX_THUMBNAILS = 6


@dataclass
class Excerpt:
    file_id: str
    recorded_at: datetime
    text: str


@dataclass
class Thumbnail:
    file_id: str
    recorded_at: datetime
    jpeg: bytes
    width: int
    height: int


@dataclass(frozen=True)
class Logo:
    png: bytes
    width: int
    height: int


@dataclass
class AggregatedReport:
    """What the renderer needs for one subscriber's week, and nothing more."""

    subscription_id: str
    email: str
    trial_name: str
    participant_id: str
    timezone: str
    week_key: str
    week_timezone: str
    shard_id: str
    summary: pd.DataFrame
    daily: pd.DataFrame
    adherence_days: int
    record_count: int
    excerpts: list[Excerpt] = field(default_factory=list)
    thumbnails: list[Thumbnail] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    language: str = "en"  # BCP 47 tag the report is written in
    definition: ReportDefinition | None = None  # None: the built-in report
    logo: Logo | None = None

    @property
    def definition_version(self) -> str | None:
        return self.definition.version if self.definition else None

    @property
    def week(self) -> Week:
        return Week.from_key(self.week_key, self.week_timezone)

    @property
    def has_data(self) -> bool:
        return self.record_count > 0 or bool(self.excerpts) or bool(self.thumbnails)


def _empty() -> tuple[pd.DataFrame, pd.DataFrame, int]:
    return pd.DataFrame(columns=SUMMARY_COLUMNS), pd.DataFrame(columns=DAILY_COLUMNS), 0


def summarize(records: list[dict], week: Week, order: dict[str, int] | None = None,
              ) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Per-metric summary, daily means and adherence (days with any entry) for `week`.

    `records` may include the previous week; it feeds only the change column. The summary's metrics are in
    alphabetical order, or in `order` (a report definition's: `metric_order`).
    """
    return summarize_many([records], week, [order])[0]


def summarize_many(record_lists: list[list[dict]], week: Week, orders: list[dict[str, int] | None] | None = None,
                   ) -> list[tuple[pd.DataFrame, pd.DataFrame, int]]:
    """`summarize` for many subscribers in one pass: one frame and one group-by for all of them.

    pandas costs about a millisecond per operation whatever the size, so a batch of subscribers in
    one frame is many times cheaper than a frame each. The results equal per-subscriber `summarize`:
    every group sees its own rows in the same order.
    """
    rows = [{**r, "owner": n} for n, records in enumerate(record_lists) for r in records]
    # Filled per subscriber with data; the others get empty tables at the end (two frames cost ~0.4 ms).
    results: list = [None] * len(record_lists)
    if not rows:
        return _or_empty(results)
    df = pd.DataFrame.from_records(rows)
    df["recorded_at"] = pd.to_datetime(df["recorded_at"], utc=True)
    df["value"] = df["value"].astype(float)
    df["ref_low"] = pd.to_numeric(df["ref_low"], errors="coerce")
    df["ref_high"] = pd.to_numeric(df["ref_high"], errors="coerce")
    in_week = (df["recorded_at"] >= pd.Timestamp(week.start_utc)) & (df["recorded_at"] < pd.Timestamp(week.end_utc))
    current = df[in_week].copy()
    previous = df[(df["recorded_at"] >= pd.Timestamp(week.previous().start_utc))
                  & (df["recorded_at"] < pd.Timestamp(week.start_utc))]
    if current.empty:
        return _or_empty(results)

    current = current.sort_values(["recorded_at", "record_id"], kind="stable")
    current["day"] = current["recorded_at"].dt.tz_convert(week.timezone).dt.date
    current["out_of_range"] = (current["value"] < current["ref_low"]) | (current["value"] > current["ref_high"])

    by_metric = current.groupby(["owner", "metric"], sort=True)
    summary = by_metric["value"].agg(["count", "mean", "min", "max"])
    summary["unit"] = by_metric["unit"].last()
    summary["out_of_range"] = by_metric["out_of_range"].sum().astype(int)
    # The most recent reference range is the one the participant is measured against now.
    summary["ref_low"] = by_metric["ref_low"].last()
    summary["ref_high"] = by_metric["ref_high"].last()
    summary["previous_mean"] = previous.groupby(["owner", "metric"])["value"].mean().reindex(summary.index)
    summary["change"] = summary["mean"] - summary["previous_mean"]
    summary = summary.reset_index()
    summary["count"] = summary["count"].astype(int)
    if orders and any(orders):
        # Each subscriber's metrics in its definition's order, for the whole batch in one sort (stable: the
        # alphabetical order stays among equals, and for subscribers without a definition).
        owners, metrics = summary["owner"].tolist(), summary["metric"].tolist()
        rank = [orders[o].get(m, len(orders[o])) if orders[o] else 0 for o, m in zip(owners, metrics)]
        summary = summary.assign(_rank=rank).sort_values(["owner", "_rank"], kind="stable").drop(columns="_rank")

    daily = current.groupby(["owner", "metric", "day"], sort=True)["value"].mean().rename("mean").reset_index()
    adherence = current.groupby("owner")["day"].nunique()
    dailies = dict(iter(daily.groupby("owner", sort=False)))
    for owner, part in summary.groupby("owner", sort=False):
        results[owner] = (
            part[SUMMARY_COLUMNS].reset_index(drop=True),
            dailies[owner][DAILY_COLUMNS].reset_index(drop=True),
            int(adherence[owner]),
        )
    return _or_empty(results)


def _or_empty(results: list) -> list[tuple[pd.DataFrame, pd.DataFrame, int]]:
    return [result if result is not None else _empty() for result in results]


def excerpt_text(data: bytes, ref: str) -> str:
    """Diary text as it was written, trimmed for the report; refuses bytes that are not UTF-8."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TextNotUtf8(f"text {ref}: not valid UTF-8 (byte {error.start})", ref) from None
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    # Control characters other than newline and tab cannot be drawn; drop them.
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc").strip()
    if len(text) > MAX_EXCERPT_CHARS:
        text = text[:MAX_EXCERPT_CHARS].rstrip() + " [...]"
    return text


def apply_definition(records: list[dict], definition: ReportDefinition | None) -> tuple[list[dict], list[Issue]]:
    """The records a trial's report shows: only its defined metrics, each against its approved reference
    range. A record in another unit than the definition's is left out (an issue), never shown under it."""
    if definition is None:
        return records, []
    kept, issues = [], []
    for record in records:
        spec = definition.metric(record["metric"])
        if spec is None:
            continue  # not in the approved report
        if record["unit"] and record["unit"] not in spec.units.values():
            error = UnitMismatch(f"record {record['record_id']}: unit is not the one the report definition shows",
                                 record["record_id"])
            issues.append(Issue.from_error("aggregate", error))
            continue
        if spec.low is not None or spec.high is not None:
            record = {**record, "ref_low": spec.low, "ref_high": spec.high}
        kept.append(record)
    return kept, issues


def metric_order(definition: ReportDefinition | None) -> dict[str, int] | None:
    """Where each metric goes in the report's summary table: the definition's order (None: alphabetical)."""
    return None if definition is None else {m.key: i for i, m in enumerate(definition.metrics)}


_LOGOS: dict[str, Logo] = {}  # by the image's sha256


def logo_of(data: bytes, trial_id: str) -> Logo:
    """The logo prepared for the PDF, once per process and image (every report of a trial has it)."""
    key = sha256_hex(data)
    if key not in _LOGOS:
        try:
            _LOGOS[key] = Logo(*make_logo(data, "logo"))
        except (CorruptImage, ImageTooLarge) as error:
            raise InvalidReportDefinition(f"trial {trial_id}: report definition is invalid: logo: {error}",
                                          trial_id) from None
    return _LOGOS[key]


def aggregate_many(bundles: list[SubscriberWeek], week_timezone: str) -> list[AggregatedReport | Exception]:
    """`aggregate_subscriber` for a batch, its tables computed in one pass; an error stays with its subscriber."""
    summaries = [None] * len(bundles)
    if len({b.week_key for b in bundles}) == 1:
        try:
            kept = [apply_definition(b.records, b.definition) for b in bundles]
            summaries = summarize_many([records for records, _ in kept],
                                       Week.from_key(bundles[0].week_key, week_timezone),
                                       [metric_order(b.definition) for b in bundles])
            summaries = [(records, issues, s) for (records, issues), s in zip(kept, summaries)]
        except Exception:
            summaries = [None] * len(bundles)  # one subscriber's data breaks the batch pass: one at a time finds whose
    return [captured(aggregate_subscriber, b, week_timezone, s) for b, s in zip(bundles, summaries)]


def aggregate_subscriber(bundle: SubscriberWeek, week_timezone: str, summarized=None) -> AggregatedReport:
    """Aggregate one subscriber (its records, issues and tables from `summarized` when given); bad items
    become issues. With a report definition, only its metrics, in its order, with its reference ranges."""
    week = Week.from_key(bundle.week_key, week_timezone)
    if summarized is None:
        records, definition_issues = apply_definition(bundle.records, bundle.definition)
        summary, daily, adherence = summarize(records, week, metric_order(bundle.definition))
    else:
        records, definition_issues, (summary, daily, adherence) = summarized
    in_week = sum(1 for r in records if week.start_utc <= r["recorded_at"] < week.end_utc)
    report = AggregatedReport(
        subscription_id=bundle.subscription_id,
        email=bundle.email,
        trial_name=bundle.trial_name,
        participant_id=bundle.participant_id,
        timezone=bundle.timezone,
        week_key=bundle.week_key,
        week_timezone=week_timezone,
        shard_id=bundle.shard_id,
        summary=summary,
        daily=daily,
        adherence_days=adherence,
        record_count=in_week,
        issues=list(bundle.issues) + definition_issues,
        language=bundle.language,
        definition=bundle.definition,
        logo=logo_of(bundle.logo, bundle.trial_id) if bundle.logo else None,
    )
    for item in bundle.files:
        try:
            if item.kind == "text":
                if len(report.excerpts) < MAX_EXCERPTS:
                    report.excerpts.append(Excerpt(item.file_id, item.recorded_at, excerpt_text(item.data, item.file_id)))
            elif item.kind == "image":
                if len(report.thumbnails) < MAX_THUMBNAILS:
                    jpeg, width, height = make_thumbnail(item.data, item.file_id)
                    report.thumbnails.append(Thumbnail(item.file_id, item.recorded_at, jpeg, width, height))
            else:
                raise ReportInputError(f"file {item.file_id}: unsupported kind {item.kind!r}", item.file_id)
        except ReportInputError as error:
            report.issues.append(Issue.from_error("aggregate", error))
    return report


def local_date(moment: datetime, timezone: str) -> date:
    return moment.astimezone(ZoneInfo(timezone)).date()

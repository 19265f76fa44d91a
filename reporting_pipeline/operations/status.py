"""Observability: the state of a report week per shard, and the same figures as Prometheus metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime

from pymongo.database import Database

from reporting_pipeline.services import mongo
from reporting_pipeline.services.objectstore import list_objects
from reporting_pipeline.sharding import shard_filter, shard_ids, shard_of
from reporting_pipeline.stages.store import report_key
from reporting_pipeline.weeks import as_utc

from .heal import held_claims


@dataclass
class ShardStatus:
    shard: str
    subscribers: int
    rendered: int
    delivered: int
    dead_letters: int
    held: int = 0  # delivery claims still `sending`: in flight, or held by a run that died
    dead_links: int = 0  # emails whose link is still valid but whose report object is gone
    partition: str = "unknown"  # the latest Dagster run's status, when an instance is at hand

    @property
    def complete(self) -> bool:
        return self.delivered >= self.subscribers and self.dead_letters == 0 and self.held == 0 and self.dead_links == 0


def dead_links(db: Database, s3, bucket: str, week: str, links_since: datetime) -> Counter:
    """Per shard, emails sent since `links_since` (so their links are still valid) whose report object is
    missing: the participant's link would return 404. One bucket listing of the week, not a request per email."""
    stored = {obj["Key"] for obj in list_objects(s3, bucket, f"reports/{week}/")}
    return Counter(d.get("shard") for d in db[mongo.DELIVERIES].find(
        {"week": week, "status": "sent", "sent_at": {"$gte": links_since}}, {"subscription_id": 1, "shard": 1})
        if report_key(week, d.get("shard"), d["subscription_id"]) not in stored)


def week_status(db: Database, week: str, shard_count: int, links: Counter | None = None) -> list[ShardStatus]:
    """Subscribers, rendered reports, sent emails, held claims and open dead letters of each shard of `week`,
    with the dead links counted by `dead_links`, if given."""
    letters = Counter(shard_of(d["subscription_id"], shard_count)
                      for d in db[mongo.DEAD_LETTERS].find({"week": week, "status": "open"}, {"subscription_id": 1}))
    held = held_claims(db, week)
    rows = []
    for shard in shard_ids(shard_count):
        rows.append(ShardStatus(
            shard=shard,
            subscribers=db[mongo.SUBSCRIPTIONS].count_documents({"status": "active", **shard_filter(shard, shard_count)}),
            rendered=db[mongo.REPORTS].count_documents({"week": week, "shard": shard, "status": {"$ne": "expired"}}),
            delivered=db[mongo.DELIVERIES].count_documents({"week": week, "shard": shard, "status": "sent"}),
            dead_letters=letters.get(shard, 0),
            held=held.get(shard, 0),
            dead_links=(links or {}).get(shard, 0),
        ))
    return rows


def delivery_latencies(db: Database, week: str) -> list[float]:
    """Seconds from a report's rendering to its email, for the week's sent deliveries."""
    out = []
    for d in db[mongo.DELIVERIES].find({"week": week, "status": "sent", "rendered_at": {"$ne": None}},
                                       {"sent_at": 1, "rendered_at": 1}):
        out.append((as_utc(d["sent_at"]) - as_utc(d["rendered_at"])).total_seconds())
    return out


def prometheus_text(rows: list[ShardStatus], week: str, latencies: list[float], queued_runs: int | None,
                    failed_runs: int | None) -> str:
    """Prometheus text exposition (version 0.0.4) of one week's figures."""
    lines = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")

    for field, help_text in (("subscribers", "Active subscribers"), ("rendered", "Reports stored"),
                             ("delivered", "Emails sent"), ("dead_letters", "Open dead letters"),
                             ("held", "Delivery claims still held"),
                             ("dead_links", "Emailed links whose report is missing")):
        metric(f"reporting_{field}", "gauge", f"{help_text} per shard of the week",
               [({"week": week, "shard": r.shard}, asdict(r)[field]) for r in rows])
    if queued_runs is not None:
        metric("reporting_queued_runs", "gauge", "Dagster runs waiting in the run queue (queue depth)",
               [({}, queued_runs)])
    if failed_runs is not None:
        metric("reporting_failed_runs", "gauge", "Dagster runs of the report jobs that failed in the last 24 h",
               [({}, failed_runs)])
    lines.append("# HELP reporting_delivery_latency_seconds Seconds from rendering to email")
    lines.append("# TYPE reporting_delivery_latency_seconds summary")
    for q in (0.5, 0.9, 0.99):
        value = sorted(latencies)[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0
        lines.append(f'reporting_delivery_latency_seconds{{week="{week}",quantile="{q}"}} {value:g}')
    lines.append(f'reporting_delivery_latency_seconds_sum{{week="{week}"}} {sum(latencies):g}')
    lines.append(f'reporting_delivery_latency_seconds_count{{week="{week}"}} {len(latencies)}')
    return "\n".join(lines) + "\n"

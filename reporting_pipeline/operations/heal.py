"""Delivery healing: reports stored but never emailed, found without anyone looking for them.

A delivery run can die between claiming a report and the mail server accepting it (a killed pod).
Its claim then holds the report until the lease runs out, and nothing would launch another delivery
run for it: the daemon's retry of the dead run ran while the claim was still held. The healer finds
the (week, shard) partitions with such reports, and with reports nobody ever claimed, so the redrive
sensor can launch a delivery run for each. Reports delivery has dealt with carry a `delivery_state`.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from pymongo.database import Database

from reporting_pipeline.services import mongo
from reporting_pipeline.weeks import as_utc

# A report nobody claimed is left this long to the delivery sensor, which normally asks within 30 s.
UNCLAIMED_SETTLE = timedelta(minutes=5)


def undelivered_partitions(db: Database, now: datetime, *, settle: timedelta = UNCLAIMED_SETTLE,
                           limit: int = 5000) -> Counter:
    """(week, shard) -> reports waiting for a delivery run: never claimed, or claimed by a holder whose lease ran out.

    Reports the ledger already marks sent (stored before `delivery_state` existed) get their marker
    here; a claim under a live lease, a failed send (a dead letter: redrive's) and an expired report
    are left alone.
    """
    waiting: Counter = Counter()
    candidates = list(db[mongo.REPORTS].find(
        {"delivery_state": None, "status": {"$ne": "expired"}},
        {"subscription_id": 1, "week": 1, "shard": 1, "rendered_at": 1}).limit(limit))
    claims = {d["_id"]: d for d in db[mongo.DELIVERIES].find(
        {"_id": {"$in": [f"{r['subscription_id']}:{r['week']}" for r in candidates]}},
        {"status": 1, "lease_expires_at": 1})}
    for report in candidates:
        claim = claims.get(f"{report['subscription_id']}:{report['week']}")
        if claim is None:
            rendered = report.get("rendered_at")
            if rendered is not None and now - as_utc(rendered) >= settle:
                waiting[(report["week"], report["shard"])] += 1
        elif claim.get("status") == "sent":
            db[mongo.REPORTS].update_one({"_id": report["_id"]}, {"$set": {"delivery_state": "sent"}})
        elif claim.get("status") == "sending" and as_utc(claim["lease_expires_at"]) < now:
            waiting[(report["week"], report["shard"])] += 1
    return waiting


def held_claims(db: Database, week: str) -> Counter:
    """shard -> claims of `week` still `sending` (in flight, or held by a run that died)."""
    return Counter(d.get("shard") for d in db[mongo.DELIVERIES].find({"week": week, "status": "sending"}, {"shard": 1}))

"""Subscribe stage: a participant's subscription to the weekly report, validated against the enrollment."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from . import mongo
from .sharding import shard_bucket


class SubscriptionRefused(Exception):
    """The participant may not subscribe; `reason` says why (no PHI)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def subscription_id(trial_id: str, participant_id: str) -> str:
    """One subscription per (trial, participant), with an id that does not reveal either."""
    return "sub_" + hashlib.sha256(f"{trial_id}\x00{participant_id}".encode()).hexdigest()[:20]


def subscribe(
    db: Database, trial_id: str, participant_id: str, *, timezone: str | None = None, now: datetime | None = None
) -> dict:
    """Create the subscription, or return the existing one. The email comes from the enrollment."""
    enrollment = db[mongo.ENROLLMENTS].find_one({"trial_id": trial_id, "participant_id": participant_id})
    if enrollment is None:
        raise SubscriptionRefused("not enrolled in this trial")
    if enrollment.get("status") != "active":
        raise SubscriptionRefused("enrollment is not active")
    if not enrollment.get("consent_electronic_reports"):
        raise SubscriptionRefused("no consent to electronic reports")
    sub_id = subscription_id(trial_id, participant_id)
    existing = db[mongo.SUBSCRIPTIONS].find_one({"_id": sub_id})
    if existing is not None:
        return existing
    doc = {
        "_id": sub_id,
        "trial_id": trial_id,
        "participant_id": participant_id,
        "enrollment_id": enrollment["_id"],
        "email": enrollment.get("email"),
        "timezone": timezone,
        "status": "active",
        "shard_bucket": shard_bucket(sub_id),
        "created_at": now or datetime.now(UTC),
    }
    try:
        db[mongo.SUBSCRIPTIONS].insert_one(doc)
    except DuplicateKeyError:  # a concurrent subscribe won the race: same result
        return db[mongo.SUBSCRIPTIONS].find_one({"_id": sub_id})
    return doc

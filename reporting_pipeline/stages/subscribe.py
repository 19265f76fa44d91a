"""Subscribe stage: participants' subscriptions to the weekly report, validated against their enrollment.

The `subscriptions` collection is the contract between the product and the pipeline. A new or changed
subscription is `pending` until `subscription_sensor` re-validates it (-> `active` or `rejected`);
participants leave by unsubscribing (`unsubscribed`); a withdrawn enrollment makes it `inactive`.
Only `active` subscriptions get reports, and delivery checks the status again at send time.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from reporting_pipeline.errors import InvalidEmailAddress
from reporting_pipeline.services import mongo
from reporting_pipeline.services.mail import validate_email
from reporting_pipeline.sharding import shard_bucket

PENDING, ACTIVE, REJECTED, UNSUBSCRIBED, INACTIVE = "pending", "active", "rejected", "unsubscribed", "inactive"
UNSUBSCRIBE_TOKENS = "unsubscribe_tokens"


class SubscriptionError(Exception):
    """A subscription request that cannot be honoured; `code` is stable, the message has no PHI."""

    code = "subscription_error"
    http_status = 400

    def __init__(self, message: str):
        super().__init__(message)


class UnknownTrial(SubscriptionError):
    code, http_status = "unknown_trial", 404


class NotEnrolled(SubscriptionError):
    code, http_status = "not_enrolled", 403


class EnrollmentNotActive(SubscriptionError):
    code, http_status = "enrollment_not_active", 403


class NoConsent(SubscriptionError):
    code, http_status = "no_consent", 403


class InvalidTimezone(SubscriptionError):
    code, http_status = "invalid_timezone", 422


class SubscriptionNotFound(SubscriptionError):
    code, http_status = "subscription_not_found", 404


class InvalidUnsubscribeToken(SubscriptionError):
    code, http_status = "invalid_unsubscribe_token", 404


def subscription_id(trial_id: str, participant_id: str) -> str:
    """One subscription per (trial, participant), with an id that does not reveal either."""
    return "sub_" + hashlib.sha256(f"{trial_id}\x00{participant_id}".encode()).hexdigest()[:20]


def check_enrollment(db: Database, trial_id: str, participant_id: str) -> dict:
    """The enrollment that allows a subscription, or the specific reason it does not."""
    if db[mongo.TRIALS].find_one({"_id": trial_id}, {"_id": 1}) is None:
        raise UnknownTrial("no such trial")
    enrollment = db[mongo.ENROLLMENTS].find_one({"trial_id": trial_id, "participant_id": participant_id})
    if enrollment is None:
        raise NotEnrolled("not enrolled in this trial")
    if enrollment.get("status") != "active":
        raise EnrollmentNotActive("enrollment is not active")
    if not enrollment.get("consent_electronic_reports"):
        raise NoConsent("no consent to electronic reports")
    return enrollment


def subscription_document(enrollment: dict, *, timezone: str | None, status: str, now: datetime) -> dict:
    """A new subscription of the enrollment's participant to its trial."""
    sub_id = subscription_id(enrollment["trial_id"], enrollment["participant_id"])
    return {
        "_id": sub_id,
        "trial_id": enrollment["trial_id"],
        "participant_id": enrollment["participant_id"],
        "enrollment_id": enrollment["_id"],
        "email": enrollment.get("email"),  # from the enrollment, never from the request
        "timezone": timezone,
        "status": status,
        "shard_bucket": shard_bucket(sub_id),
        "created_at": now,
        "updated_at": now,
    }


def subscribe(
    db: Database, trial_id: str, participant_id: str, *, timezone: str | None = None,
    now: datetime | None = None, status: str = PENDING,
) -> tuple[dict, bool]:
    """Create the subscription (or return the existing one); returns (subscription, created)."""
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidTimezone("unknown timezone: use an IANA name such as Europe/Berlin") from None
    enrollment = check_enrollment(db, trial_id, participant_id)
    now = now or datetime.now(UTC)
    sub_id = subscription_id(trial_id, participant_id)
    existing = db[mongo.SUBSCRIPTIONS].find_one({"_id": sub_id})
    if existing is not None:
        if existing["status"] in (PENDING, ACTIVE):
            return existing, False  # subscribing twice changes nothing
        # Coming back after unsubscribing: validated again like a new one.
        db[mongo.SUBSCRIPTIONS].update_one({"_id": sub_id}, {"$set": {
            "status": PENDING, "status_reason": "resubscribed", "timezone": timezone, "updated_at": now}})
        return db[mongo.SUBSCRIPTIONS].find_one({"_id": sub_id}), False
    doc = subscription_document(enrollment, timezone=timezone, status=status, now=now)
    try:
        db[mongo.SUBSCRIPTIONS].insert_one(doc)
    except DuplicateKeyError:  # a concurrent subscribe won the race: same result
        return db[mongo.SUBSCRIPTIONS].find_one({"_id": sub_id}), False
    return doc, True


def list_subscriptions(db: Database, *, participant_id: str | None = None, trial_id: str | None = None,
                       status: str | None = None) -> list[dict]:
    query = {k: v for k, v in (("participant_id", participant_id), ("trial_id", trial_id), ("status", status)) if v}
    return list(db[mongo.SUBSCRIPTIONS].find(query).sort("_id", 1))


def unsubscribe(db: Database, sub_id: str, *, participant_id: str | None = None, reason: str = "participant",
                now: datetime | None = None) -> dict:
    """Stop reports for a subscription; with `participant_id`, only the owner may (others see not-found)."""
    query = {"_id": sub_id, **({"participant_id": participant_id} if participant_id else {})}
    doc = db[mongo.SUBSCRIPTIONS].find_one(query)
    if doc is None:
        raise SubscriptionNotFound("no such subscription")
    if doc["status"] != UNSUBSCRIBED:
        now = now or datetime.now(UTC)
        db[mongo.SUBSCRIPTIONS].update_one({"_id": sub_id}, {"$set": {
            "status": UNSUBSCRIBED, "status_reason": reason, "unsubscribed_at": now, "updated_at": now}})
        doc = db[mongo.SUBSCRIPTIONS].find_one({"_id": sub_id})
    return doc


def _token_hash(token: str) -> str:
    return hashlib.sha256(f"unsubscribe\x00{token}".encode()).hexdigest()


def issue_unsubscribe_token(db: Database, sub_id: str, now: datetime | None = None) -> str:
    """A fresh unguessable token for one email; only its hash is stored, and it can only unsubscribe."""
    return issue_unsubscribe_tokens(db, [sub_id], now)[sub_id]


def issue_unsubscribe_tokens(db: Database, sub_ids: list[str], now: datetime | None = None) -> dict[str, str]:
    """A fresh token for each of these subscriptions' next email, stored in one write."""
    tokens = {sub_id: secrets.token_urlsafe(32) for sub_id in sub_ids}
    if tokens:
        now = now or datetime.now(UTC)
        db[UNSUBSCRIBE_TOKENS].insert_many([
            {"_id": _token_hash(token), "subscription_id": sub_id, "purpose": "unsubscribe", "created_at": now}
            for sub_id, token in tokens.items()])
    return tokens


def subscription_for_token(db: Database, token: str) -> dict:
    """The subscription a token unsubscribes, or InvalidUnsubscribeToken."""
    if not isinstance(token, str) or not 20 <= len(token) <= 100:
        raise InvalidUnsubscribeToken("unsubscribe link is not valid")
    entry = db[UNSUBSCRIBE_TOKENS].find_one({"_id": _token_hash(token), "purpose": "unsubscribe"})
    doc = entry and db[mongo.SUBSCRIPTIONS].find_one({"_id": entry["subscription_id"]})
    if not doc:
        raise InvalidUnsubscribeToken("unsubscribe link is not valid")
    return doc


def unsubscribe_with_token(db: Database, token: str, now: datetime | None = None) -> dict:
    """One-click unsubscribe; repeating it is harmless (mail providers may POST twice)."""
    doc = subscription_for_token(db, token)
    now = now or datetime.now(UTC)
    db[UNSUBSCRIBE_TOKENS].update_one({"_id": _token_hash(token)}, {"$set": {"used_at": now}})
    return unsubscribe(db, doc["_id"], reason="one-click", now=now)


def validate_pending(db: Database, doc: dict) -> tuple[str, str, str | None]:
    """A pending subscription's fate, decided without writing: (new status, reason, email from the enrollment)."""
    try:
        enrollment = check_enrollment(db, doc["trial_id"], doc["participant_id"])
        validate_email(enrollment.get("email"), doc["_id"])
    except (SubscriptionError, InvalidEmailAddress) as error:
        return REJECTED, getattr(error, "code", "invalid_email"), doc.get("email")
    return ACTIVE, "validated", enrollment.get("email")


def apply_validation(db: Database, doc: dict, decision: tuple[str, str, str | None], now: datetime) -> None:
    status, reason, email = decision
    db[mongo.SUBSCRIPTIONS].update_one({"_id": doc["_id"], "status": PENDING}, {"$set": {
        "status": status, "status_reason": reason, "email": email, "validated_at": now, "updated_at": now}})


def revalidate(db: Database, doc: dict, now: datetime) -> tuple[str, str]:
    """Decide a pending subscription's fate and record it: (new status, reason)."""
    decision = validate_pending(db, doc)
    apply_validation(db, doc, decision, now)
    return decision[:2]


def deactivate_for_enrollment(db: Database, trial_id: str, participant_id: str, now: datetime) -> int:
    """A withdrawn enrollment ends its subscriptions; returns how many were still live."""
    result = db[mongo.SUBSCRIPTIONS].update_many(
        {"trial_id": trial_id, "participant_id": participant_id, "status": {"$in": [PENDING, ACTIVE]}},
        {"$set": {"status": INACTIVE, "status_reason": "enrollment_withdrawn", "updated_at": now}},
    )
    return result.modified_count

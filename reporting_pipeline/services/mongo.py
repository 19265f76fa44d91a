"""MongoDB access: one place for connection, collection names and indexes."""

from __future__ import annotations

import threading
from urllib.parse import parse_qsl

import pymongo
from pymongo import ASCENDING, IndexModel
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

TRIALS = "trials"
ENROLLMENTS = "enrollments"
SUBSCRIPTIONS = "subscriptions"
RECORDS = "records"
FILES = "files"
REPORTS = "reports"
DELIVERIES = "deliveries"
DEAD_LETTERS = "dead_letters"
DATA_ISSUES = "data_issues"

INDEXES: dict[str, list[IndexModel]] = {
    # No unique (trial, participant) indexes here: a subscription's `_id` is derived from the pair, which
    # makes it unique already, and enrollments are the trial system's to keep unique (a constraint of ours
    # would fail its writes). Also, mongoeco (the local stand-in) checks a compound unique index by
    # scanning the collection, so 1,000 subscribers would take minutes to load. Deployments that have the
    # old unique `trial_participant` indexes may keep or drop them.
    ENROLLMENTS: [
        IndexModel([("trial_id", ASCENDING), ("participant_id", ASCENDING)], name="trial_participant_lookup"),
        IndexModel([("updated_at", ASCENDING)], name="updated_at"),
        # The subscription sensor's cursor: (updated_at, _id) moves past any number of equal timestamps.
        IndexModel([("updated_at", ASCENDING), ("_id", ASCENDING)], name="updated_at_id"),
    ],
    SUBSCRIPTIONS: [
        IndexModel([("trial_id", ASCENDING), ("participant_id", ASCENDING)], name="trial_participant_lookup"),
        IndexModel([("status", ASCENDING), ("shard_bucket", ASCENDING)], name="status_shard"),
        IndexModel([("status", ASCENDING), ("updated_at", ASCENDING)], name="status_updated"),
        IndexModel([("participant_id", ASCENDING)], name="participant"),
    ],
    RECORDS: [
        IndexModel([("participant_id", ASCENDING), ("recorded_at", ASCENDING)], name="participant_time"),
    ],
    FILES: [
        IndexModel([("participant_id", ASCENDING), ("recorded_at", ASCENDING)], name="participant_time"),
        IndexModel([("s3_key", ASCENDING)], unique=True, name="s3_key"),
    ],
    REPORTS: [
        IndexModel([("subscription_id", ASCENDING), ("week", ASCENDING)], unique=True, name="subscription_week"),
        IndexModel([("week", ASCENDING), ("shard", ASCENDING)], name="week_shard"),
        IndexModel([("s3_key", ASCENDING)], name="s3_key"),
        # The delivery healer's query: reports delivery has not dealt with yet.
        IndexModel([("delivery_state", ASCENDING), ("status", ASCENDING)], name="delivery_state"),
    ],
    DELIVERIES: [
        IndexModel([("subscription_id", ASCENDING), ("week", ASCENDING)], unique=True, name="subscription_week"),
        IndexModel([("week", ASCENDING), ("status", ASCENDING)], name="week_status"),
    ],
    DEAD_LETTERS: [
        IndexModel(
            [("subscription_id", ASCENDING), ("week", ASCENDING), ("stage", ASCENDING)],
            unique=True,
            name="subscription_week_stage",
        ),
        IndexModel([("week", ASCENDING), ("status", ASCENDING)], name="week_status"),
    ],
    DATA_ISSUES: [
        IndexModel(
            [("subscription_id", ASCENDING), ("week", ASCENDING), ("ref", ASCENDING), ("code", ASCENDING)],
            unique=True,
            name="subscription_week_ref_code",
        ),
    ],
}

_MOCK_CLIENTS: dict[str, object] = {}
_MOCK_LOCK = threading.Lock()


DEFAULT_TIMEOUT_MS = 10_000


def connect(uri: str, timeout_ms: int = DEFAULT_TIMEOUT_MS):
    """A pymongo client for `uri`, giving up on an unreachable server after `timeout_ms` (server selection and
    connect; options the URI sets itself win). Constructing it does not wait for the server.

    Why not pymongo's 30 s: a sensor tick waiting on an unreachable server holds the code server's shutdown,
    and Kubernetes kills a pod 30 s after SIGTERM. Steps ride out longer outages through their retries.

    `mongomock://NAME` gives an in-process mongomock client shared by everything in this process
    that names the same NAME: the demo and unit tests use it where no MongoDB server exists.
    """
    if uri.startswith("mongomock://"):
        import mongomock  # only needed for the embedded mode

        with _MOCK_LOCK:
            if uri not in _MOCK_CLIENTS:
                _MOCK_CLIENTS[uri] = mongomock.MongoClient(tz_aware=True)
            return _MOCK_CLIENTS[uri]
    # Retries happen once, in reporting_pipeline.services.retry; every write the pipeline makes is idempotent.
    # The query string, not pymongo's parse_uri: that resolves a mongodb+srv host in DNS.
    given = {name.lower() for name, _ in parse_qsl(uri.partition("?")[2])}
    timeouts = {name: timeout_ms for name in ("serverSelectionTimeoutMS", "connectTimeoutMS")
                if name.lower() not in given}
    return pymongo.MongoClient(uri, tz_aware=True, appname="reporting-pipeline", retryWrites=False, retryReads=False,
                               **timeouts)


def upsert(collection, query: dict, update: dict):
    """update_one with upsert, safe when two writers upsert the same new document at once.

    MongoDB may answer one of two racing upserts with a duplicate-key error; by then the document
    exists and a second try updates it.
    """
    try:
        return collection.update_one(query, update, upsert=True)
    except DuplicateKeyError:
        return collection.update_one(query, update, upsert=True)


def ensure_indexes(db: Database) -> None:
    """Create every index the pipeline relies on; safe to call any number of times."""
    for collection, models in INDEXES.items():
        db[collection].create_indexes(models)

"""MongoDB access: one place for connection, collection names and indexes.

pymongo is imported where a client is made or an index created, not by this module: the report workers use
these names through the stage modules but never talk to MongoDB, and pymongo is a tenth of a CPU-second of
every worker server's start.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

if TYPE_CHECKING:
    from pymongo import IndexModel
    from pymongo.database import Database

TRIALS = "trials"
ENROLLMENTS = "enrollments"
SUBSCRIPTIONS = "subscriptions"
RECORDS = "records"
FILES = "files"
REPORTS = "reports"
DELIVERIES = "deliveries"
DEAD_LETTERS = "dead_letters"
DATA_ISSUES = "data_issues"


@dataclass(frozen=True)
class Index:
    """An ascending index on `keys` (every index the pipeline has is ascending)."""

    keys: tuple[str, ...]
    name: str
    unique: bool = False

    def model(self) -> IndexModel:
        from pymongo import ASCENDING, IndexModel

        return IndexModel([(key, ASCENDING) for key in self.keys], name=self.name, unique=self.unique)


INDEXES: dict[str, list[Index]] = {
    # No unique (trial, participant) indexes here: a subscription's `_id` is derived from the pair, which
    # makes it unique already, and enrollments are the trial system's to keep unique (a constraint of ours
    # would fail its writes). Also, mongoeco (the local stand-in) checks a compound unique index by
    # scanning the collection, so 1,000 subscribers would take minutes to load. Deployments that have the
    # old unique `trial_participant` indexes may keep or drop them.
    ENROLLMENTS: [
        Index(("trial_id", "participant_id"), name="trial_participant_lookup"),
        Index(("updated_at",), name="updated_at"),
        # The subscription sensor's cursor: (updated_at, _id) moves past any number of equal timestamps.
        Index(("updated_at", "_id"), name="updated_at_id"),
    ],
    SUBSCRIPTIONS: [
        Index(("trial_id", "participant_id"), name="trial_participant_lookup"),
        Index(("status", "shard_bucket"), name="status_shard"),
        Index(("status", "updated_at"), name="status_updated"),
        Index(("participant_id",), name="participant"),
    ],
    RECORDS: [
        Index(("participant_id", "recorded_at"), name="participant_time"),
    ],
    FILES: [
        Index(("participant_id", "recorded_at"), name="participant_time"),
        Index(("s3_key",), unique=True, name="s3_key"),
    ],
    REPORTS: [
        Index(("subscription_id", "week"), unique=True, name="subscription_week"),
        Index(("week", "shard"), name="week_shard"),
        Index(("s3_key",), name="s3_key"),
        # The delivery healer's query: reports delivery has not dealt with yet.
        Index(("delivery_state", "status"), name="delivery_state"),
    ],
    DELIVERIES: [
        Index(("subscription_id", "week"), unique=True, name="subscription_week"),
        Index(("week", "status"), name="week_status"),
    ],
    DEAD_LETTERS: [
        Index(("subscription_id", "week", "stage"), unique=True, name="subscription_week_stage"),
        Index(("week", "status"), name="week_status"),
    ],
    # A data issue's `_id` is derived from (subscription, week, ref, code), which makes it unique, and this index
    # finds a batch's issues (dead_letters.record_data_issues). Deployments may keep their old unique
    # `subscription_week_ref_code` index: issues are looked up by those fields before any is inserted.
    DATA_ISSUES: [
        Index(("subscription_id", "week"), name="subscription_week"),
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
    import pymongo

    return pymongo.MongoClient(uri, tz_aware=True, appname="reporting-pipeline", retryWrites=False, retryReads=False,
                               **timeouts)


def upsert(collection, query: dict, update: dict):
    """update_one with upsert, safe when two writers upsert the same new document at once.

    MongoDB may answer one of two racing upserts with a duplicate-key error; by then the document
    exists and a second try updates it.
    """
    from pymongo.errors import DuplicateKeyError

    try:
        return collection.update_one(query, update, upsert=True)
    except DuplicateKeyError:
        return collection.update_one(query, update, upsert=True)


def ensure_indexes(db: Database) -> None:
    """Create every index the pipeline relies on; safe to call any number of times."""
    for collection, indexes in INDEXES.items():
        db[collection].create_indexes([index.model() for index in indexes])

"""Resources: the services the pipeline talks to (MongoDB, S3, SMTP), configured from `Settings`."""

from __future__ import annotations

import threading

from dagster import ConfigurableIOManager, ConfigurableResource
from pydantic import Field

from reporting_pipeline.services import mongo
from reporting_pipeline.services.mail import SmtpSettings
from reporting_pipeline.services.objectstore import Encryption, ensure_bucket, make_client

_DB_CACHE: dict[tuple[str, str], object] = {}
_DB_LOCK = threading.Lock()


class MongoResource(ConfigurableResource):
    """MongoDB holding trials, subscriptions, records, file metadata, reports and the delivery ledger."""

    uri: str = Field(description="MONGODB_URI; mongomock://NAME for an in-process database.")
    database: str = "reporting"

    def get_db(self):
        # One client per process: pymongo clients pool connections and are thread-safe.
        key = (self.uri, self.database)
        with _DB_LOCK:
            if key not in _DB_CACHE:
                db = mongo.connect(self.uri)[self.database]
                mongo.ensure_indexes(db)
                _DB_CACHE[key] = db
            return _DB_CACHE[key]


class S3Resource(ConfigurableResource):
    """The bucket holding participant files and encrypted reports."""

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    sse: str = "AES256"
    kms_key_id: str | None = None
    create_bucket: bool = False

    def get_client(self):
        client = make_client(self.endpoint_url, self.region)
        if self.create_bucket:
            ensure_bucket(client, self.bucket)
        return client

    def encryption(self) -> Encryption:
        return Encryption(self.sse, self.kms_key_id)


class SmtpResource(ConfigurableResource):
    """The SMTP relay that sends report emails."""

    host: str
    port: int = 25
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    email_from: str = "reports@localhost"
    max_messages_per_second: float | None = None
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    dkim_private_key: str | None = None

    def settings(self) -> SmtpSettings:
        return SmtpSettings(self.host, self.port, self.username, self.password, self.starttls, self.email_from,
                            dkim_selector=self.dkim_selector, dkim_domain=self.dkim_domain,
                            dkim_private_key=self.dkim_private_key,
                            max_messages_per_second=self.max_messages_per_second)


class NoStoredOutputs(ConfigurableIOManager):
    """The `io_manager` of every asset: they all store their work themselves (S3, MongoDB) and return
    metadata only, so nothing of a participant's passes between steps through Dagster's storage; a step
    that returned data would fail here rather than have it pickled to disk. (Dagster's default, the
    filesystem IO manager, would also import fsspec in every run: a fifth of an empty run's CPU.)"""

    def handle_output(self, context, obj) -> None:
        if obj is not None:
            raise TypeError(f"{context.step_key}: assets of this pipeline return metadata only, "
                            f"not a {type(obj).__name__} for Dagster to store")

    def load_input(self, context):
        raise TypeError(f"{context.step_key}: assets of this pipeline pass nothing to each other through Dagster")

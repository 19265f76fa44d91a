"""Store stage: objects go to S3 first, their MongoDB metadata is written only after the upload succeeded."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from reporting_pipeline.services import mongo
from reporting_pipeline.services.objectstore import Encryption, put_if_changed, sha256_hex
from reporting_pipeline.weeks import as_utc

if TYPE_CHECKING:
    from pymongo.database import Database

PDF = "application/pdf"


# Object metadata of a participant file: when it was recorded, so a file whose record is lost can be
# registered again in the week it belongs to.
RECORDED_AT_META = "recorded-at"


def recorded_at_of(metadata: dict) -> datetime | None:
    """The recorded-at time an upload wrote on the object, or None."""
    try:
        return datetime.fromisoformat(metadata[RECORDED_AT_META]).astimezone(UTC)
    except (KeyError, ValueError, TypeError):
        return None


# Object metadata of a report: what its record says about how it was rendered.
LANGUAGE_META, DEFINITION_META = "language", "definition-version"


def report_metadata(language: str, definition_version: str | None) -> dict[str, str]:
    return {LANGUAGE_META: language, **({DEFINITION_META: definition_version} if definition_version else {})}


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
    doc = file_document(file_id=file_id, trial_id=trial_id, participant_id=participant_id, recorded_at=recorded_at,
                        kind=kind, content_type=content_type, extension=extension, data=data)
    put_if_changed(s3, bucket, doc["s3_key"], data, content_type, encryption, metadata=file_metadata(recorded_at))
    db[mongo.FILES].replace_one({"_id": file_id}, {**doc, "uploaded_at": datetime.now(UTC)}, upsert=True)
    return doc


def file_metadata(recorded_at: datetime) -> dict[str, str]:
    """Object metadata of a participant file: when it was recorded, so a lost record can be rebuilt."""
    return {RECORDED_AT_META: as_utc(recorded_at).isoformat()}


def file_document(*, file_id: str, trial_id: str, participant_id: str, recorded_at: datetime, kind: str,
                  content_type: str, extension: str, data: bytes) -> dict:
    """The `files` record of a participant file (without its upload time)."""
    if kind not in ("text", "image"):
        raise ValueError(f"file kind must be 'text' or 'image', got {kind!r}")
    return {
        "_id": file_id,
        "trial_id": trial_id,
        "participant_id": participant_id,
        "recorded_at": recorded_at,
        "kind": kind,
        "s3_key": file_key(trial_id, participant_id, file_id, extension),
        "content_type": content_type,
        "size": len(data),
        "sha256": sha256_hex(data),
    }


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
    registered: bool = True,
    language: str = "en",
    definition_version: str | None = None,
) -> dict:
    """Upload one rendered report (encrypted), then upsert its `reports` record.

    `registered=False` says no `reports` record exists yet, so the object is not looked for first.
    `language` (the BCP 47 tag it is written in; its email follows it) and `definition_version` (the
    trial's report definition that rendered it, None for the built-in layout) go on the record, and
    on the object's metadata, so that a record rebuilt from the object keeps them.
    """
    key = report_key(week_key, shard_id, subscription_id)
    written = put_if_changed(s3, bucket, key, pdf, PDF, encryption, look_first=registered,
                             metadata=report_metadata(language, definition_version))
    now = datetime.now(UTC)
    doc = {
        "subscription_id": subscription_id,
        "week": week_key,
        "shard": shard_id,
        "s3_key": key,
        "sha256": sha256_hex(pdf),
        "size": len(pdf),
        "pages": pages,
        "language": language,
        "definition_version": definition_version,
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

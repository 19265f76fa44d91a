"""Objects first, metadata after; deterministic keys; encrypted writes; indexes."""

from datetime import UTC, datetime

import mongomock
import pytest
from botocore.exceptions import ClientError

from reporting_pipeline.services import mongo
from reporting_pipeline.stages.store import report_key, store_file, store_report

AT = datetime(2026, 11, 17, 9, tzinfo=UTC)


def test_indexes_are_created_idempotently_and_enforce_one_report_and_delivery_per_week():
    db = mongomock.MongoClient().db
    mongo.ensure_indexes(db)
    mongo.ensure_indexes(db)
    for name in (mongo.REPORTS, mongo.DELIVERIES):
        info = db[name].index_information()["subscription_week"]
        assert info["unique"] and list(info["key"]) == [("subscription_id", 1), ("week", 1)]


def test_file_metadata_is_written_only_after_the_upload_succeeded(pipeline):
    with pytest.raises(ClientError):
        store_file(pipeline.db, pipeline.s3, "no-such-bucket", pipeline.encryption, file_id="f1", trial_id="T",
                   participant_id="P", recorded_at=AT, kind="text", content_type="text/plain", extension="txt",
                   data=b"note")
    assert pipeline.db[mongo.FILES].count_documents({}) == 0
    doc = store_file(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, file_id="f1", trial_id="T",
                     participant_id="P", recorded_at=AT, kind="text", content_type="text/plain", extension="txt",
                     data=b"note")
    head = pipeline.s3.head_object(Bucket=pipeline.bucket, Key=doc["s3_key"])
    assert head["ServerSideEncryption"] == "AES256" and head["ContentLength"] == doc["size"] == 4


def test_report_record_is_written_only_after_the_upload_and_a_rerun_replaces_it(pipeline):
    args = dict(subscription_id="sub_1", week_key="2026-11-16", shard_id="03", pdf=b"%PDF-1.4 one", pages=1)
    with pytest.raises(ClientError):
        store_report(pipeline.db, pipeline.s3, "no-such-bucket", pipeline.encryption, **args)
    assert pipeline.db[mongo.REPORTS].count_documents({}) == 0
    store_report(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, **args)
    store_report(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, **{**args, "pdf": b"%PDF-1.4 two"})
    records = list(pipeline.db[mongo.REPORTS].find())
    assert len(records) == 1 and records[0]["size"] == len(b"%PDF-1.4 two")
    listed = pipeline.s3.list_objects_v2(Bucket=pipeline.bucket, Prefix="reports/")["Contents"]
    assert [o["Key"] for o in listed] == [report_key("2026-11-16", "03", "sub_1")] == [records[0]["s3_key"]]
    body = pipeline.s3.get_object(Bucket=pipeline.bucket, Key=records[0]["s3_key"])["Body"].read()
    assert body == b"%PDF-1.4 two"

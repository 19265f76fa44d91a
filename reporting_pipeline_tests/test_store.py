"""Objects first, metadata after; deterministic keys; encrypted writes; indexes; data issues recorded once."""

import sys
from collections import Counter
from datetime import UTC, datetime

import mongomock
import pytest
from botocore.exceptions import ClientError
from pymongo import MongoClient, monitoring

from reporting_pipeline.errors import Issue
from reporting_pipeline.operations.dead_letters import data_issue_id, record_data_issues
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


class CommandCounter(monitoring.CommandListener):
    """What the MongoDB server is asked, as pymongo's command monitoring sees it: (command, collection) counts."""

    def __init__(self):
        self.counts: Counter = Counter()

    def started(self, event):
        # A long answer comes in more than one batch (getMore, named by its cursor): still that one query.
        if event.command_name != "getMore":
            self.counts[(event.command_name, event.command.get(event.command_name))] += 1

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


class RacingCollection:
    """A collection into which another run records `doc` just before this one inserts (a hook in the code path)."""

    def __init__(self, collection, doc: dict):
        self.collection, self.doc = collection, doc

    def insert_many(self, documents, **kwargs):
        self.collection.insert_one(self.doc)
        return self.collection.insert_many(documents, **kwargs)

    def __getattr__(self, name):
        return getattr(self.collection, name)


@pytest.mark.skipif(sys.version_info < (3, 13), reason="mongoeco's wire server needs Python >= 3.13")
def test_a_batchs_data_issues_take_a_few_round_trips_and_are_never_recorded_twice():
    from reporting_pipeline.local.wire_mongo import MongoWireServer

    week = "2026-11-16"
    left_out = [(f"sub_{s}", week, [Issue("render", "missing_glyph", f"diary {i}: no glyph for U+1F600", f"diary {i}")
                                    for i in range(8)]) for s in range(20)]
    counter = CommandCounter()
    with MongoWireServer() as server, MongoClient(server.uri, tz_aware=True, event_listeners=[counter]) as client:
        db = client["reporting"]
        mongo.ensure_indexes(db)
        issues = db[mongo.DATA_ISSUES]
        # Written by a release before `_id` was derived: found and updated, not recorded a second time.
        issues.insert_one({"subscription_id": "sub_0", "week": week, "ref": "diary 0", "code": "missing_glyph",
                           "stage": "render", "message": "diary 0: no glyph for U+1F600", "first_seen": AT,
                           "last_seen": AT})
        counter.counts.clear()
        record_data_issues(db, left_out)
        assert counter.counts == {("find", mongo.DATA_ISSUES): 1, ("insert", mongo.DATA_ISSUES): 1,
                                  ("update", mongo.DATA_ISSUES): 1}
        assert issues.count_documents({}) == 160
        old = issues.find_one({"subscription_id": "sub_0", "ref": "diary 0"})
        assert old["first_seen"] == AT < old["last_seen"]
        assert issues.count_documents({"_id": data_issue_id("sub_3", week, left_out[3][2][5])}) == 1

        # The same batch again (a retry), one message changed: updated in place.
        left_out[4][2][1] = Issue("render", "missing_glyph", "diary 1: no glyph for U+1F601", "diary 1")
        counter.counts.clear()
        record_data_issues(db, left_out)
        assert counter.counts == {("find", mongo.DATA_ISSUES): 1, ("update", mongo.DATA_ISSUES): 2}
        assert issues.count_documents({}) == 160
        assert issues.find_one({"subscription_id": "sub_4", "ref": "diary 1"})["message"].endswith("U+1F601")

        # Another run records one of a new subscriber's issues between this one's query and its insert.
        racing = [Issue("fetch", "malformed_record", f"record r{i}: value is not a number", f"r{i}") for i in range(3)]
        theirs = {"_id": data_issue_id("sub_new", week, racing[1]), "subscription_id": "sub_new", "week": week,
                  "ref": "r1", "code": "malformed_record", "stage": "fetch", "message": "an older message",
                  "first_seen": AT, "last_seen": AT}
        record_data_issues({mongo.DATA_ISSUES: RacingCollection(issues, theirs)}, [("sub_new", week, racing)])
        recorded = {d["ref"]: d for d in issues.find({"subscription_id": "sub_new"})}
        assert sorted(recorded) == ["r0", "r1", "r2"]
        assert recorded["r1"]["message"] == "record r1: value is not a number" and recorded["r1"]["first_seen"] == AT

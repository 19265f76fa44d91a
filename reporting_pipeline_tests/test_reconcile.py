"""Reconciliation finds every kind of drift between S3 and MongoDB, repairs what it safely can, page by page."""

import time
from datetime import UTC, datetime, timedelta

from reporting_pipeline.local.seed import seed
from reporting_pipeline.operations.reconcile import CHANGED_REASON, MISSING_REASON, reconcile
from reporting_pipeline.operations.redrive import REDRIVE_REQUESTS
from reporting_pipeline.services import mongo
from reporting_pipeline.services.objectstore import put_if_changed, sha256_hex
from reporting_pipeline.sharding import shard_of
from reporting_pipeline.stages.store import report_key, store_report

from .conftest import LAST_WEEK, NOW

PREVIOUS_WEEK = "2026-11-09"
GRACE = timedelta(hours=24)


def build_state(pipeline) -> list[str]:
    """Seeded files plus stored reports for every subscriber this week and two of them last week."""
    subs = seed(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=4, now=NOW).subscription_ids
    for week, who in ((LAST_WEEK, subs), (PREVIOUS_WEEK, subs[:3])):
        for sub in who:
            store_report(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscription_id=sub,
                         week_key=week, shard_id=shard_of(sub, 8), pdf=f"%PDF-1.4 {sub} {week}".encode(), pages=1)
    return subs


def put(pipeline, key: str, data: bytes) -> None:
    put_if_changed(pipeline.s3, pipeline.bucket, key, data, "application/octet-stream", pipeline.encryption)


def overwrite(pipeline, key: str, data: bytes) -> None:
    """Another writer replaces an object's bytes (and its sha256 metadata) behind the pipeline's back."""
    pipeline.s3.put_object(Bucket=pipeline.bucket, Key=key, Body=data, Metadata={"sha256": sha256_hex(data)})


def inject_drift(pipeline, subs: list[str]) -> dict:
    """Eight findings plus one upload younger than the grace period; returns what was injected."""
    files = list(pipeline.db[mongo.FILES].find().sort("s3_key", 1))
    drift = {
        "orphan_file": f"files/TRIAL-CARDIO-01/{files[0]['participant_id']}/note-late.txt",
        "stray_file": "files/stray.bin",
        "orphan_report": report_key(LAST_WEEK, "00", "sub_ghost"),
        "missing_file": files[1]["s3_key"],
        "changed_file": files[2]["s3_key"],
        "missing_report": (subs[0], LAST_WEEK),
        "changed_reports": [(subs[1], LAST_WEEK), (subs[2], PREVIOUS_WEEK)],
        "young_file": f"files/TRIAL-GLU-02/{files[3]['participant_id']}/photo-uploading.jpg",
    }
    put(pipeline, drift["orphan_file"], b"A note whose metadata write was lost.")
    put(pipeline, drift["stray_file"], b"not a participant file key")
    put(pipeline, drift["orphan_report"], b"%PDF-1.4 nobody")
    pipeline.s3.delete_object(Bucket=pipeline.bucket, Key=drift["missing_file"])
    overwrite(pipeline, drift["changed_file"], b"different bytes")
    sub, week = drift["missing_report"]
    pipeline.s3.delete_object(Bucket=pipeline.bucket, Key=report_key(week, shard_of(sub, 8), sub))
    for sub, week in drift["changed_reports"]:
        overwrite(pipeline, report_key(week, shard_of(sub, 8), sub), b"%PDF-1.4 tampered")
    # LastModified has one-second resolution: a second later, the young upload is strictly younger.
    time.sleep(1.05)
    put(pipeline, drift["young_file"], b"\xff\xd8 jpeg still uploading")
    young_at = pipeline.s3.head_object(Bucket=pipeline.bucket, Key=drift["young_file"])["LastModified"]
    # moto cannot backdate objects, so the clock moves forward instead: everything but the young upload is
    # now older than the grace period.
    drift["now"] = young_at + GRACE
    return drift


def test_drift_is_found_repaired_where_safe_and_left_for_investigation_otherwise(pipeline):
    subs = build_state(pipeline)
    drift = inject_drift(pipeline, subs)
    db, s3, bucket, now = pipeline.db, pipeline.s3, pipeline.bucket, drift["now"]

    # At real time every orphan is a fresh upload whose metadata may still be on its way.
    today = reconcile(db, s3, bucket, now=datetime.now(UTC))
    assert today.orphans == 0 and today.recent_objects == 4
    assert (today.missing, today.mismatched) == (2, 3)

    found = reconcile(db, s3, bucket, now=now)
    assert found.found == {"orphan_files": 2, "orphan_reports": 1, "missing_files": 1, "missing_reports": 1,
                           "mismatched_files": 1, "mismatched_reports": 2}
    assert found.recent_objects == 1 and found.repaired == 0 and not found.clean
    assert drift["young_file"] not in found.samples["orphan_files"]
    assert sorted(found.samples["orphan_files"]) == sorted([drift["orphan_file"], drift["stray_file"]])
    assert found.samples["missing_files"] == [drift["missing_file"]]
    assert found.samples["mismatched_files"] == [drift["changed_file"]]
    assert db[REDRIVE_REQUESTS].count_documents({}) == 0  # a dry run changes nothing
    # Participant files and reports; a trial's logo (trials/...) is no participant data and not reconciled.
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    objects = sum(1 for o in listed if o["Key"].startswith(("files/", "reports/")))
    assert found.objects_scanned == objects

    repaired = reconcile(db, s3, bucket, now=now, repair=True)
    assert repaired.findings == 8 and repaired.repaired == 6 and repaired.unrepaired == 2
    print(f"reconcile: {repaired.objects_scanned} objects, {repaired.records_scanned} records, "
          f"8 drifts injected (+1 young upload), {repaired.findings} found, {repaired.repaired} repaired, "
          f"{repaired.unrepaired} left for investigation, {repaired.queued_rerenders} re-renders queued")

    # The orphan file is registered again from its key and bytes.
    data = s3.get_object(Bucket=bucket, Key=drift["orphan_file"])["Body"].read()
    doc = db[mongo.FILES].find_one({"s3_key": drift["orphan_file"]})
    assert doc["_id"] == "note-late" and doc["participant_id"] in drift["orphan_file"]
    assert (doc["size"], doc["sha256"]) == (len(data), sha256_hex(data))
    assert (doc["kind"], doc["content_type"], doc["reregistered_at"]) == ("text", "text/plain", now)
    # Objects that belong to nobody are gone; the young upload is left alone.
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert drift["stray_file"] not in listed and drift["orphan_report"] not in listed
    assert drift["young_file"] in listed and db[mongo.FILES].find_one({"s3_key": drift["young_file"]}) is None

    # The missing report's stale record is gone; one redrive request per (week, shard) re-renders the rest.
    sub, week = drift["missing_report"]
    assert db[mongo.REPORTS].find_one({"subscription_id": sub, "week": week}) is None
    expected = {}
    for sub, week in [drift["missing_report"], *drift["changed_reports"]]:
        expected.setdefault((week, shard_of(sub, 8)), []).append(sub)
    requests = list(db[REDRIVE_REQUESTS].find())
    assert {(r["week"], r["shard"]): r["subscription_ids"] for r in requests} == {
        part: sorted(ids) for part, ids in expected.items()}
    assert len(requests) == len(expected) == repaired.queued_rerenders
    missing_part = (drift["missing_report"][1], shard_of(drift["missing_report"][0], 8))
    for r in requests:
        assert (MISSING_REASON in r["reason"]) == ((r["week"], r["shard"]) == missing_part)
        assert r["status"] == "pending"
    assert any(CHANGED_REASON in r["reason"] for r in requests)

    # What is left: the two file findings nobody can repair automatically; re-renders are awaited, not re-queued.
    after = reconcile(db, s3, bucket, now=now)
    assert after.found == {"orphan_files": 0, "orphan_reports": 0, "missing_files": 1, "missing_reports": 0,
                           "mismatched_files": 1, "mismatched_reports": 0}
    assert after.awaiting_rerender == 2 and after.unrepaired == 2 and not after.clean
    again = reconcile(db, s3, bucket, now=now, repair=True)
    assert again.queued_rerenders == 0 and db[REDRIVE_REQUESTS].count_documents({}) == len(expected)
    assert again.as_metadata() == after.as_metadata()


def test_a_clean_store_is_clean(pipeline):
    build_state(pipeline)
    report = reconcile(pipeline.db, pipeline.s3, pipeline.bucket, now=NOW + timedelta(days=365), repair=True)
    assert report.clean and report.findings == report.repaired == report.queued_rerenders == 0
    assert report.objects_scanned == report.records_scanned > 20
    assert report.recent_objects == report.awaiting_rerender == report.past_retention == 0


class CountingS3:
    """An S3 client that records the size of every listing page it returns."""

    def __init__(self, client):
        self.client = client
        self.pages: list[int] = []

    def list_objects_v2(self, **kwargs):
        page = self.client.list_objects_v2(**kwargs)
        self.pages.append(len(page.get("Contents", [])))
        return page

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_page_by_page_gives_the_same_result_as_one_big_page(pipeline):
    subs = build_state(pipeline)
    drift = inject_drift(pipeline, subs)
    small, large = CountingS3(pipeline.s3), CountingS3(pipeline.s3)
    by_two = reconcile(pipeline.db, small, pipeline.bucket, now=drift["now"], page_size=2)
    whole = reconcile(pipeline.db, large, pipeline.bucket, now=drift["now"], page_size=1000)
    assert by_two.as_metadata() == whole.as_metadata() and by_two.samples == whole.samples
    assert by_two.findings == 8 and by_two.objects_scanned > 10
    assert max(small.pages) == 2 and len(small.pages) >= by_two.objects_scanned // 2
    assert len(large.pages) == 2  # one page per prefix


def test_repair_never_deletes_a_report_someone_was_emailed_and_rebuilds_its_record(pipeline):
    """A MongoDB restore to an older snapshot loses a delivered report's record: the object stays, the record
    comes back, and the link in the participant's email still downloads it."""
    import urllib.request

    from reporting_pipeline.services.objectstore import presigned_get_url
    from reporting_pipeline.stages.notify import complete_delivery, try_claim

    db, s3, bucket = pipeline.db, pipeline.s3, pipeline.bucket
    mongo.ensure_indexes(db)
    delivered = store_report(db, s3, bucket, pipeline.encryption, subscription_id="sub_sent", week_key=LAST_WEEK,
                             shard_id="03", pdf=b"%PDF-1.4 sent", pages=1, language="ja-JP", definition_version="3")
    store_report(db, s3, bucket, pipeline.encryption, subscription_id="sub_never", week_key=LAST_WEEK,
                 shard_id="03", pdf=b"%PDF-1.4 never sent", pages=1)
    assert try_claim(db, "sub_sent", LAST_WEEK, "run-1", timedelta(minutes=15), "03") == "claimed"
    complete_delivery(db, "sub_sent", LAST_WEEK, "run-1", {**delivered, "shard": "03"}, "<m@x>")
    link = presigned_get_url(s3, bucket, delivered["s3_key"], 3600)
    db[mongo.REPORTS].delete_many({})  # the restore: both records gone

    later = datetime.now(UTC) + GRACE + timedelta(hours=1)
    repaired = reconcile(db, s3, bucket, now=later, repair=True)
    assert repaired.found["orphan_reports"] == 2 and repaired.repaired == 2
    objects = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="reports/").get("Contents", [])}
    assert objects == {delivered["s3_key"]}  # the one never emailed is deleted, the delivered one is not
    rebuilt = db[mongo.REPORTS].find_one({"subscription_id": "sub_sent", "week": LAST_WEEK})
    assert (rebuilt["s3_key"], rebuilt["sha256"], rebuilt["shard"], rebuilt["delivery_state"]) == (
        delivered["s3_key"], delivered["sha256"], "03", "sent")
    # How it was rendered comes back from the object's metadata: a re-sent email keeps the report's language.
    assert (rebuilt["language"], rebuilt["definition_version"]) == ("ja-JP", "3")
    with urllib.request.urlopen(link, timeout=30) as response:
        assert response.read() == b"%PDF-1.4 sent"
    assert reconcile(db, s3, bucket, now=later).clean


def test_a_reregistered_orphan_file_keeps_the_week_it_was_recorded_in(pipeline):
    from reporting_pipeline.stages.store import store_file

    db, s3, bucket = pipeline.db, pipeline.s3, pipeline.bucket
    recorded = datetime(2026, 11, 18, 21, 5, tzinfo=UTC)  # in the week of 16 Nov
    store_file(db, s3, bucket, pipeline.encryption, file_id="note-lost", trial_id="T1", participant_id="P-1",
               recorded_at=recorded, kind="text", content_type="text/plain", extension="txt", data=b"slept well")
    put(pipeline, "files/T1/P-1/note-unknown.txt", b"uploaded by something that wrote no date")
    db[mongo.FILES].delete_many({})  # the records are lost; the objects are orphans

    later = datetime.now(UTC) + GRACE + timedelta(hours=1)
    reconcile(db, s3, bucket, now=later, repair=True)
    back = {f["_id"]: f for f in db[mongo.FILES].find()}
    assert back["note-lost"]["recorded_at"] == recorded and not back["note-lost"]["recorded_at_unknown"]
    # Without a recorded date it is registered but dated nowhere: no week's report picks it up.
    assert back["note-unknown"]["recorded_at"] is None and back["note-unknown"]["recorded_at_unknown"]

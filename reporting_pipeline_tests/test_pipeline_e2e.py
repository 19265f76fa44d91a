"""The whole weekly cycle through Dagster: schedule -> shard runs -> delivery sensor -> delivery runs."""

import hashlib
import re
import statistics
import urllib.request
from collections import Counter, defaultdict
from urllib.parse import parse_qs, unquote, urlparse

from dagster import AssetKey

from reporting_pipeline.local.demo import run_weekly_cycle
from reporting_pipeline.local.seed import seed
from reporting_pipeline.services import mongo
from reporting_pipeline.sharding import shard_of
from reporting_pipeline.stages.definitions import definition_of_trial
from reporting_pipeline.stages.i18n import language
from reporting_pipeline.stages.notify import SUBJECT
from reporting_pipeline.stages.store import store_file
from reporting_pipeline.weeks import Week

from .conftest import LAST_WEEK, NOW, pdf_image_count, pdf_text
from .test_images import huge_png

WEEK = Week.from_key(LAST_WEEK, "UTC")


def link_of(message) -> str:
    """The report's link: the first of the body, on a line of its own, in every language."""
    body = message.get_body(("plain",)).get_content()
    return re.search(r"^(https?://\S+)\r?$", body, re.M).group(1)


def folded(text: str) -> str:
    return " ".join(text.split())


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:  # a plain GET, as a mail client would
        assert response.status == 200
        return response.read()


def s3_key_of(url: str, bucket: str) -> str:
    path = unquote(urlparse(url).path)
    assert path.startswith(f"/{bucket}/")
    return path[len(bucket) + 2:]


def week_stats(db, trial_id, participant_id):
    """Expected aggregates, computed here from the raw records without the pipeline's code."""
    values = defaultdict(list)
    for r in db[mongo.RECORDS].find({"trial_id": trial_id, "participant_id": participant_id}):
        at = r["recorded_at"]
        if WEEK.start_utc <= at < WEEK.end_utc and isinstance(r.get("value"), (int, float)):
            values[r["metric"]].append(float(r["value"]))
    return {m: (len(v), statistics.fmean(v), min(v), max(v)) for m, v in values.items()}


def reports_snapshot(pipeline):
    objects = {}
    for page in pipeline.s3.get_paginator("list_objects_v2").paginate(Bucket=pipeline.bucket, Prefix="reports/"):
        for item in page.get("Contents", []):
            objects[item["Key"]] = (item["ETag"], item["LastModified"])
    records = {(r["subscription_id"], r["week"]): r["sha256"] for r in pipeline.db[mongo.REPORTS].find()}
    return objects, records


def test_every_subscriber_gets_exactly_one_email_whose_link_downloads_their_report(pipeline, instance):
    seeded = seed(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=24, now=NOW)
    assert len({shard_of(s, 8) for s in seeded.subscription_ids}) >= 5  # spread over several shards

    result, _ = run_weekly_cycle(pipeline.definitions(), instance, NOW)

    assert result.week == LAST_WEEK
    assert len(result.report_runs) == 8 and all(r.success for r in result.report_runs)
    assert len(result.delivery_runs) == 8 and all(r.success for r in result.delivery_runs)
    subscriptions = {s["_id"]: s for s in pipeline.db[mongo.SUBSCRIPTIONS].find()}
    enrollment_emails = sorted(e["email"] for e in pipeline.db[mongo.ENROLLMENTS].find())
    messages = pipeline.outbox.messages
    assert sorted(m["To"] for m in messages) == enrollment_emails  # everyone, once
    assert Counter(rcpt for _, rcpts in pipeline.outbox.envelopes for rcpt in rcpts).most_common(1)[0][1] == 1

    languages = Counter()
    for message in messages:
        link = link_of(message)
        query = parse_qs(urlparse(link).query)
        assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Expires"] == [str(72 * 3600)]
        key = s3_key_of(link, pipeline.bucket)
        report = pipeline.db[mongo.REPORTS].find_one({"s3_key": key})
        sub = subscriptions[report["subscription_id"]]
        assert sub["email"] == message["To"]
        words = language(report["language"])
        languages[report["language"]] += 1
        assert message["Subject"] == words._(SUBJECT)  # the email is in the report's language
        raw_email = message.as_string()
        trial = pipeline.db[mongo.TRIALS].find_one({"_id": sub["trial_id"]})
        definition = definition_of_trial(trial)
        assert report["definition_version"] == definition.version
        labels = [label for m in definition.metrics for label in m.labels.values()]
        for phi in (sub["participant_id"], trial["name"], "systolic", "glucose", "weight", "heart", *labels):
            assert phi not in raw_email and phi not in message.get_body(("plain",)).get_content()

        data = download(link)
        assert hashlib.sha256(data).hexdigest() == report["sha256"] and len(data) == report["size"]
        assert pipeline.s3.head_object(Bucket=pipeline.bucket, Key=key)["ServerSideEncryption"] == "AES256"
        text = pdf_text(data)
        assert sub["participant_id"] in text and trial["name"] in text
        assert folded(words.week_range(WEEK.monday, WEEK.sunday)) in text
        stats = week_stats(pipeline.db, sub["trial_id"], sub["participant_id"])
        assert stats, "seeded participants have measurements every week"
        for metric, (count, mean, low, high) in stats.items():
            decimals = definition.metric(metric).decimals  # as the trial's definition prints it, in its locale
            for value in (mean, low, high):
                assert words.number(value, decimals) in text
        photos = pipeline.db[mongo.FILES].count_documents({
            "participant_id": sub["participant_id"], "kind": "image",
            "recorded_at": {"$gte": WEEK.start_utc, "$lt": WEEK.end_utc}})
        # The photos where the trial's definition shows them, and its logo.
        assert pdf_image_count(data) == (photos if "photos" in definition.sections else 0) + bool(definition.logo)

    rendered = sum(
        rec.asset_materialization.metadata["rendered"].value
        for rec in instance.fetch_materializations(AssetKey("report_pdfs"), limit=100).records
    )
    assert rendered == 24
    assert len(languages) >= 3, languages  # the seed's locales and its two trials' approved languages


def test_running_the_same_partitions_again_sends_nothing_and_writes_nothing_new(pipeline, instance):
    seed(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=20, now=NOW)
    defs = pipeline.definitions()
    first, cursor = run_weekly_cycle(defs, instance, NOW)
    assert len(pipeline.outbox.messages) == 20
    objects, records = reports_snapshot(pipeline)
    assert len(objects) == len(records) == 20

    # The same shard runs again (a retry, a manual re-materialization); each re-materialization makes
    # the sensor launch delivery again.
    second, _ = run_weekly_cycle(defs, instance, NOW, sensor_cursor=cursor)
    assert all(r.success for r in second.report_runs + second.delivery_runs)
    assert len(second.delivery_runs) == 8
    assert len(pipeline.outbox.messages) == 20
    assert reports_snapshot(pipeline) == (objects, records)  # same keys, same bytes, not even rewritten
    assert pipeline.db[mongo.DELIVERIES].count_documents({"status": "sent"}) == 20
    assert pipeline.db["delivery_audit"].count_documents({}) == 20


def test_bad_input_is_recorded_specifically_and_everyone_else_is_served(pipeline, instance):
    seeded = seed(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=12, now=NOW)
    subs = [pipeline.db[mongo.SUBSCRIPTIONS].find_one({"_id": s}) for s in seeded.subscription_ids]
    at = WEEK.start_utc.replace(hour=10)
    db, s3 = pipeline.db, pipeline.s3

    def add_file(sub, file_id, kind, data, ext):
        store_file(db, s3, pipeline.bucket, pipeline.encryption, file_id=file_id, trial_id=sub["trial_id"],
                   participant_id=sub["participant_id"], recorded_at=at, kind=kind,
                   content_type="application/octet-stream", extension=ext, data=data)

    base = {"trial_id": subs[0]["trial_id"], "participant_id": subs[0]["participant_id"], "recorded_at": at,
            "metric": "weight", "unit": "kg"}
    db[mongo.RECORDS].insert_many([{**base, "_id": "bad-missing"}, {**base, "_id": "bad-text", "value": "heavy"}])
    add_file(subs[1], "bad-jpeg", "image", b"\xff\xd8\xff\xe0garbage", "jpg")
    add_file(subs[2], "huge-png", "image", huge_png(), "png")
    add_file(subs[3], "latin1-note", "text", "Caf\xe9 na\xefve".encode("latin-1"), "txt")
    db[mongo.FILES].insert_one({"_id": "ghost", "trial_id": subs[4]["trial_id"],
                                "participant_id": subs[4]["participant_id"], "recorded_at": at, "kind": "image",
                                "s3_key": "files/nowhere/ghost.jpg", "content_type": "image/jpeg", "size": 10})
    db[mongo.SUBSCRIPTIONS].update_one({"_id": subs[5]["_id"]}, {"$set": {"email": "not-an-email"}})

    result, _ = run_weekly_cycle(pipeline.definitions(), instance, NOW)

    assert all(r.success for r in result.report_runs + result.delivery_runs)
    issues = {(i["subscription_id"], i["ref"], i["code"]) for i in db[mongo.DATA_ISSUES].find()}
    assert issues == {
        (subs[0]["_id"], "bad-missing", "malformed_record"),
        (subs[0]["_id"], "bad-text", "malformed_record"),
        (subs[1]["_id"], "bad-jpeg", "corrupt_image"),
        (subs[2]["_id"], "huge-png", "image_too_large"),
        (subs[3]["_id"], "latin1-note", "text_not_utf8"),
        (subs[4]["_id"], "ghost", "missing_object"),
    }
    messages = {i["ref"]: i["message"] for i in db[mongo.DATA_ISSUES].find()}
    assert messages["bad-missing"] == "record bad-missing: value is missing"
    assert messages["bad-text"] == "record bad-text: value is not a number (got str)"
    assert "not valid UTF-8" in messages["latin1-note"] and "missing from S3" in messages["ghost"]
    assert "400,000,000 pixels" in messages["huge-png"]

    dead = list(db[mongo.DEAD_LETTERS].find())
    assert [(d["subscription_id"], d["stage"], d["code"], d["status"]) for d in dead] == [
        (subs[5]["_id"], "deliver", "invalid_email", "open")]
    assert "not-an-email" not in dead[0]["message"]

    # Everyone else got exactly one email, including those whose bad items were left out.
    recipients = sorted(m["To"] for m in pipeline.outbox.messages)
    assert recipients == sorted(s["email"] for s in subs if s["_id"] != subs[5]["_id"])
    for message in pipeline.outbox.messages:
        sub = next(s for s in subs if s["email"] == message["To"])
        text = pdf_text(download(link_of(message)))
        assert sub["participant_id"] in text
        if sub in subs[:5]:
            report = db[mongo.REPORTS].find_one({"subscription_id": sub["_id"]})
            left_out = db[mongo.DATA_ISSUES].count_documents({"subscription_id": sub["_id"]})
            assert language(report["language"]).n_(
                "{n} item could not be included in this report; the study team has been notified.",
                "{n} items could not be included in this report; the study team has been notified.",
                left_out) in text
    assert db[mongo.REPORTS].count_documents({}) == 12  # the invalid address still got a stored report

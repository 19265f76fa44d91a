"""Retention: lifecycle rules on the bucket, the sweep of old reports, the maintenance assets."""

from datetime import UTC, datetime, timedelta

import pytest
from dagster import materialize

from reporting_pipeline.defs.maintenance import maintenance_definitions
from reporting_pipeline.defs.resources import MongoResource, S3Resource
from reporting_pipeline.local.seed import seed
from reporting_pipeline.operations.reconcile import reconcile
from reporting_pipeline.operations.retain import apply_lifecycle, report_expires_at, sweep
from reporting_pipeline.services import mongo
from reporting_pipeline.settings import Settings
from reporting_pipeline.stages.store import store_report

from .conftest import LAST_WEEK, NOW


def rules_by_id(pipeline) -> dict:
    config = pipeline.s3.get_bucket_lifecycle_configuration(Bucket=pipeline.bucket)
    return {rule["ID"]: rule for rule in config["Rules"]}


def test_lifecycle_rules_are_put_next_to_existing_ones_and_reapplying_changes_nothing(pipeline):
    s3, bucket = pipeline.s3, pipeline.bucket
    logs = {"ID": "keep-logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 30}}
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [logs]})

    assert apply_lifecycle(s3, bucket, 90) is True
    rules = rules_by_id(pipeline)
    assert set(rules) == {"keep-logs", "expire-reports"}
    assert rules["keep-logs"]["Expiration"] == {"Days": 30}
    assert (rules["expire-reports"]["Filter"], rules["expire-reports"]["Expiration"]) == (
        {"Prefix": "reports/"}, {"Days": 90})

    assert apply_lifecycle(s3, bucket, 90) is False
    assert rules_by_id(pipeline) == rules
    assert apply_lifecycle(s3, bucket, 30) is True
    assert rules_by_id(pipeline)["expire-reports"]["Expiration"] == {"Days": 30}
    assert len(rules_by_id(pipeline)) == 2


def test_lifecycle_and_sweep_refuse_values_that_would_delete_the_wrong_things(pipeline):
    for days in (0, 3651, True):
        with pytest.raises(ValueError):
            apply_lifecycle(pipeline.s3, pipeline.bucket, days)
    for page_size in (0, 1001):
        with pytest.raises(ValueError, match="page_size"):
            sweep(pipeline.db, pipeline.s3, pipeline.bucket, now=NOW, days=90, page_size=page_size)


def store(pipeline, sub: str, week: str = LAST_WEEK) -> dict:
    return store_report(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscription_id=sub,
                        week_key=week, shard_id="00", pdf=f"%PDF-1.4 {sub}".encode(), pages=1)


def keys(pipeline, prefix: str) -> set[str]:
    return {o["Key"] for o in pipeline.s3.list_objects_v2(Bucket=pipeline.bucket, Prefix=prefix).get("Contents", [])}


def test_sweep_expires_only_old_reports_and_is_idempotent(pipeline):
    db, s3, bucket = pipeline.db, pipeline.s3, pipeline.bucket
    now = datetime.now(UTC)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # MongoDB keeps milliseconds
    docs = {sub: store(pipeline, sub) for sub in ("sub_old", "sub_gone", "sub_young")}
    long_ago = now - timedelta(days=100)
    db[mongo.REPORTS].update_many({"subscription_id": {"$in": ["sub_old", "sub_gone"]}},
                                  {"$set": {"rendered_at": long_ago, "created_at": long_ago}})
    s3.delete_object(Bucket=bucket, Key=docs["sub_gone"]["s3_key"])  # a lifecycle rule got there first
    old = db[mongo.REPORTS].find_one({"subscription_id": "sub_old"})
    assert report_expires_at(old, 90) == long_ago + timedelta(days=90)

    first = sweep(db, s3, bucket, now=now, days=90, page_size=1)
    assert (first.reports_expired, first.report_objects_deleted, first.delete_errors) == (2, 2, 0)
    assert keys(pipeline, "reports/") == {docs["sub_young"]["s3_key"]}
    statuses = {d["subscription_id"]: (d.get("status"), d.get("expired_at")) for d in db[mongo.REPORTS].find()}
    assert statuses == {"sub_old": ("expired", now), "sub_gone": ("expired", now), "sub_young": (None, None)}

    # Eight days on, the expired reports are not touched again.
    later = now + timedelta(days=8)
    second = sweep(db, s3, bucket, now=later, days=90, page_size=2)
    assert (second.reports_expired, second.report_objects_deleted) == (0, 0)
    assert {d["expired_at"] for d in db[mongo.REPORTS].find({"status": "expired"})} == {now}
    # Expired records are out of reconciliation's scope: their missing objects are no drift.
    assert reconcile(db, s3, bucket, now=later).clean


def resources(pipeline) -> dict:
    return {"mongo": MongoResource(uri=pipeline.env["MONGODB_URI"]),
            "s3": S3Resource(bucket=pipeline.bucket, endpoint_url=pipeline.env["AWS_ENDPOINT_URL"])}


def test_maintenance_assets_materialize_and_the_check_fails_on_unrepairable_drift(pipeline, instance):
    seed(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=2, now=NOW)
    store(pipeline, "sub_1")
    maintenance = maintenance_definitions(Settings(retention_days=90))
    assets = [*maintenance["assets"], *maintenance["asset_checks"]]

    result = materialize(assets, resources=resources(pipeline), instance=instance)
    assert result.success
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "storage_is_consistent" and check.passed
    reconciled = result.asset_materializations_for_node("storage_reconciliation")[0].metadata
    assert reconciled["objects_scanned"].value == reconciled["records_scanned"].value > 0
    assert reconciled["unrepaired"].value == 0
    retained = result.asset_materializations_for_node("report_retention")[0].metadata
    assert retained["retention_days"].value == 90 and retained["reports_expired"].value == 0

    # A participant file lost from S3 cannot be repaired: the asset records it, the check fails.
    lost = pipeline.db[mongo.FILES].find_one()["s3_key"]
    pipeline.s3.delete_object(Bucket=pipeline.bucket, Key=lost)
    result = materialize(assets, resources=resources(pipeline), instance=instance)
    assert result.success  # a failed check is a finding, not a failed run
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.metadata["missing_files"].value == 1
    assert result.asset_materializations_for_node("storage_reconciliation")[0].metadata["missing"].value == 1

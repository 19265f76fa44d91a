"""The batch IO manager: S3 in production, the same streaming behaviour as on disk."""

from dagster import materialize

from reporting_pipeline import mongo
from reporting_pipeline.defs.assets import aggregated_tables, fetched_records, report_pdfs
from reporting_pipeline.defs.partitions import report_partition_key
from reporting_pipeline.embedded import patched_env
from reporting_pipeline.seed import seed
from reporting_pipeline.sharding import shard_of

from .conftest import LAST_WEEK, NOW


def test_batches_travel_through_encrypted_s3_objects_when_configured(pipeline, instance):
    seeded = seed(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=6, now=NOW)
    shard = shard_of(seeded.subscription_ids[0], 8)
    members = sorted(s for s in seeded.subscription_ids if shard_of(s, 8) == shard)
    with patched_env({"IO_MANAGER_S3_PREFIX": "dagster-io", "REPORT_BATCH_SIZE": "1"}):
        definitions = pipeline.definitions()
    assert type(definitions.resources["batch_io_manager"]).__name__ == "S3BatchIOManager"
    result = materialize(
        [fetched_records, aggregated_tables, report_pdfs],
        resources=definitions.resources, instance=instance, partition_key=report_partition_key(LAST_WEEK, shard),
    )
    assert result.success
    prefix = f"dagster-io/fetched_records/week={LAST_WEEK}/shard={shard}/"
    run_dir = f"{prefix}runs/{result.run_id}/"
    keys = [o["Key"] for o in pipeline.s3.list_objects_v2(Bucket=pipeline.bucket, Prefix=prefix)["Contents"]]
    # batch size 1: one chunk per subscriber, then the run's manifest and the partition's pointer to it
    assert sorted(keys) == sorted([f"{run_dir}chunk-{i:06d}.pkl" for i in range(len(members))]
                                  + [f"{run_dir}manifest.json", f"{prefix}latest.json"])
    assert all(pipeline.s3.head_object(Bucket=pipeline.bucket, Key=k)["ServerSideEncryption"] == "AES256" for k in keys)
    meta = result.asset_materializations_for_node("fetched_records")[0].metadata
    assert meta["subscribers"].value == len(members) and meta["batches"].value == len(members)
    assert sorted(r["subscription_id"] for r in pipeline.db[mongo.REPORTS].find()) == members

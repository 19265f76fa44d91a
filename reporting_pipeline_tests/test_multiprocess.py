"""Steps in separate processes: the IO manager carries batches between them, MongoDB is a real wire server."""

import os
import sys

import pytest
from dagster import DagsterEventType, execute_job, instance_for_test, reconstructable

from reporting_pipeline import mongo
from reporting_pipeline.defs.partitions import report_partition_key, report_partitions_def
from reporting_pipeline.embedded import patched_env
from reporting_pipeline.seed import seed
from reporting_pipeline.sharding import shard_of

from .conftest import LAST_WEEK, NOW

pytestmark = pytest.mark.skipif(sys.version_info < (3, 13), reason="mongoeco's wire server needs Python >= 3.13")


def weekly_reports_job():
    from reporting_pipeline.defs.definitions import build_definitions

    return build_definitions().resolve_job_def("weekly_reports_job")


def report_delivery_job():
    from reporting_pipeline.defs.definitions import build_definitions

    return build_definitions().resolve_job_def("report_delivery_job")


def run(job_fn, instance, key):
    tags = report_partitions_def.get_tags_for_partition_key(key)
    return execute_job(reconstructable(job_fn), instance=instance, tags=tags)


def test_shard_run_with_steps_in_separate_processes(pipeline, tmp_path):
    from reporting_pipeline.wire_mongo import MongoWireServer

    with MongoWireServer() as server, patched_env({"MONGODB_URI": server.uri}), \
            instance_for_test(temp_dir=str(tmp_path)) as instance:
        db = mongo.connect(server.uri)["reporting"]
        seeded = seed(db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=6, weeks=2, now=NOW)
        shard = shard_of(seeded.subscription_ids[0], 8)
        members = [s for s in seeded.subscription_ids if shard_of(s, 8) == shard]
        key = report_partition_key(LAST_WEEK, shard)

        result = run(weekly_reports_job, instance, key)
        assert result.success
        step_pids = {
            e.step_key: e.dagster_event.pid for e in instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_START)
        }
        assert set(step_pids) == {"fetched_records", "aggregated_tables", "report_pdfs"}
        assert len(set(step_pids.values())) == 3 and os.getpid() not in step_pids.values()
        io_dir = tmp_path / "io" / "fetched_records" / f"week={LAST_WEEK}" / f"shard={shard}"
        assert (io_dir / "latest.json").exists() and (io_dir / "runs" / result.run_id / "manifest.json").exists()
        assert sorted(r["subscription_id"] for r in db[mongo.REPORTS].find()) == sorted(members)

        assert run(report_delivery_job, instance, key).success
        assert run(report_delivery_job, instance, key).success  # launched twice: still one email each
        subscriptions = {s["_id"]: s["email"] for s in db[mongo.SUBSCRIPTIONS].find()}
        assert sorted(m["To"] for m in pipeline.outbox.messages) == sorted(subscriptions[s] for s in members)

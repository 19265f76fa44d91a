"""Runs as Dagster executes them in production: through `execute_job` with the executor the definitions
give (one process per run), retried from failure through Dagster's re-execution API, MongoDB a real wire
server shared by the processes (the run's, its workers', the test's)."""

import os
import sys

import pytest
from dagster import DagsterEventType, ReexecutionOptions, execute_job, instance_for_test, reconstructable

from reporting_pipeline.defs.assets import only_subscribers
from reporting_pipeline.defs.partitions import report_partition_key
from reporting_pipeline.local.demo import materialization_metadata
from reporting_pipeline.local.embedded import patched_env
from reporting_pipeline.services import mongo
from reporting_pipeline.services.objectstore import make_client

from .conftest import LAST_WEEK, seeded_wire_server
from .faults import FaultyS3Server

pytestmark = pytest.mark.skipif(sys.version_info < (3, 13), reason="mongoeco's wire server needs Python >= 3.13")


def weekly_reports_job():
    from reporting_pipeline.defs.definitions import build_definitions

    return build_definitions().resolve_job_def("weekly_reports_job")


def report_delivery_job():
    from reporting_pipeline.defs.definitions import build_definitions

    return build_definitions().resolve_job_def("report_delivery_job")


def tags_for(key) -> dict:
    return {"dagster/partition": str(key), "dagster/partition/shard": "00", "dagster/partition/week": LAST_WEEK}


def stored_bytes(root, skip) -> list[tuple[str, bytes]]:
    return [(str(p), p.read_bytes()) for p in root.rglob("*") if p.is_file() and skip not in p.parents]


def test_a_retried_run_reports_on_its_own_subscribers_and_nothing_personal_is_stored_between_stages(
        pipeline, tmp_path):
    # Uploads of reports fail while `outage` is on: the run's one step fails after its retries.
    s3 = FaultyS3Server(fail_if=lambda method, path: method == "PUT" and "/reports/" in path)
    home = tmp_path / "dagster"
    home.mkdir()
    client = make_client(s3.endpoint_url)
    with s3, seeded_wire_server(client, pipeline.bucket, pipeline.encryption, subscribers=6, weeks=2) as (
            server, subscription_ids), instance_for_test(temp_dir=str(home)) as instance, \
            patched_env({"MONGODB_URI": server.uri, "AWS_ENDPOINT_URL": s3.endpoint_url, "REPORT_SHARDS": "1",
                         "REPORT_RETRY_ATTEMPTS": "2"}):
        db = mongo.connect(server.uri)["reporting"]
        key = report_partition_key(LAST_WEEK, "00")

        s3.enabled = True
        failed = execute_job(reconstructable(weekly_reports_job), instance=instance, tags=tags_for(key),
                             raise_on_error=False)
        assert not failed.success
        s3.enabled = False
        # Meanwhile a first-report run for one new subscriber writes the same partition.
        first_report = execute_job(reconstructable(weekly_reports_job), instance=instance, tags=tags_for(key),
                                   run_config=only_subscribers(subscription_ids[:1]))
        assert first_report.success
        # The daemon's run retry: the failed run re-executed from its failure, with the parent's tags.
        retried = execute_job(reconstructable(weekly_reports_job), instance=instance,
                              tags=instance.get_run_by_id(failed.run_id).tags,
                              reexecution_options=ReexecutionOptions.from_failure(failed.run_id, instance))
        assert retried.success, [e.message for e in retried.all_events if e.is_failure]
        pids = {e.dagster_event.pid for e in instance.all_logs(retried.run_id, of_type=DagsterEventType.STEP_START)}
        assert pids == {os.getpid()}  # the step ran in the run worker: one process per run
        rendered = materialization_metadata(retried, "report_pdfs")["rendered"]
        assert rendered == 6  # all of the shard, not the first report's one subscriber
        assert sorted(r["subscription_id"] for r in db[mongo.REPORTS].find()) == sorted(subscription_ids)

        assert execute_job(reconstructable(report_delivery_job), instance=instance, tags=tags_for(key)).success
        assert execute_job(reconstructable(report_delivery_job), instance=instance, tags=tags_for(key)).success
        assert len(pipeline.outbox.messages) == 6  # delivered twice: still one email each

        # Nothing a participant is or wrote was stored on the way: not in Dagster's storage (event
        # logs, compute logs) or anywhere else on disk but the SMTP server's outbox, not in the bucket
        # outside their files and the encrypted reports.
        participants = [s["participant_id"] for s in db[mongo.SUBSCRIPTIONS].find()]
        addresses = [s["email"] for s in db[mongo.SUBSCRIPTIONS].find()]
        diary = [client.get_object(Bucket=pipeline.bucket, Key=f["s3_key"])["Body"].read().decode()[:30]
                 for f in db[mongo.FILES].find({"kind": "text"})]
        assert diary and participants
        stored = stored_bytes(tmp_path, skip=tmp_path / "outbox")
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=pipeline.bucket)
        stored += [(o["Key"], client.get_object(Bucket=pipeline.bucket, Key=o["Key"])["Body"].read())
                   for page in pages for o in page.get("Contents", [])
                   if not o["Key"].startswith(("files/", "reports/"))]
        leaks = [(where, needle) for where, data in stored for needle in participants + addresses + diary
                 if needle.encode() in data]
        print(f"\nretried run: {rendered} reports; scanned {len(stored)} stored "
              f"files/objects for {len(participants)} participant ids, addresses and diary texts: {len(leaks)} found")
        assert leaks == []

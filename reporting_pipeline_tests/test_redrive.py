"""Dead letters and their redrive: CLI, redrive sensor, failed-partition redrive, and the operators' alert."""

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from dagster import DagsterRunStatus, RunsFilter, build_run_status_sensor_context, build_sensor_context

from reporting_pipeline.defs import sensors
from reporting_pipeline.defs.partitions import report_partition_key
from reporting_pipeline.local.demo import run_weekly_cycle
from reporting_pipeline.local.seed import seed
from reporting_pipeline.operations.redrive import REDRIVE_REQUESTS
from reporting_pipeline.services import mongo
from reporting_pipeline.sharding import shard_of

from .conftest import LAST_WEEK, NOW, seeded_wire_server


def cli(*args, env):
    return subprocess.run([sys.executable, "-m", "reporting_pipeline.apps.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


@pytest.mark.skipif(sys.version_info < (3, 13), reason="mongoeco's wire server needs Python >= 3.13")
def test_dead_letter_redrive_reruns_only_what_is_not_done(pipeline, instance):
    from reporting_pipeline.local.embedded import patched_env

    # The CLI runs in its own process, so the database must be a server both can reach.
    with seeded_wire_server(pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=6, weeks=2) as (
            server, subscription_ids), patched_env({"MONGODB_URI": server.uri}):
        env = {**pipeline.env, "MONGODB_URI": server.uri}
        db = mongo.connect(server.uri)["reporting"]
        victim = subscription_ids[2]
        db[mongo.SUBSCRIPTIONS].update_one({"_id": victim}, {"$set": {"email": "broken@@example"}})
        definitions = pipeline.definitions()
        run_weekly_cycle(definitions, instance, NOW)
        assert len(pipeline.outbox.messages) == 5
        letter = db[mongo.DEAD_LETTERS].find_one({"subscription_id": victim})
        assert letter["stage"] == "deliver" and letter["status"] == "open"

        # The address is fixed in the product; an operator lists and redrives the dead letter.
        db[mongo.SUBSCRIPTIONS].update_one({"_id": victim}, {"$set": {"email": "fixed@example.org"}})
        listed = cli("dead-letters", "list", "--week", LAST_WEEK, env=env)
        assert listed.returncode == 0 and victim in listed.stdout and "invalid_email" in listed.stdout
        assert "broken@@example" not in listed.stdout and "1 dead letter(s)" in listed.stdout
        done = cli("dead-letters", "redrive", "--week", LAST_WEEK, env=env)
        assert done.returncode == 0 and "queued 1 redrive request(s) for 1 open dead letter(s)" in done.stdout

        sensor = definitions.resolve_sensor_def("redrive_sensor")
        tick = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=definitions, resources=definitions.resources))
        assert len(tick.run_requests) == 1
        request = tick.run_requests[0]
        assert request.job_name == "report_delivery_job"
        assert request.partition_key == report_partition_key(LAST_WEEK, shard_of(victim, 8))
        job = definitions.resolve_job_def(request.job_name)
        assert job.execute_in_process(instance=instance, partition_key=request.partition_key,
                                      tags={**request.tags, "dagster/run_key": request.run_key}).success
        assert [m["To"] for m in pipeline.outbox.messages[5:]] == ["fixed@example.org"]  # nobody else again
        assert db[mongo.DEAD_LETTERS].find_one({"subscription_id": victim})["status"] == "resolved"
        # Next tick: the request is seen as launched and not requested again.
        assert not sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=definitions, resources=definitions.resources)).run_requests
        assert db[REDRIVE_REQUESTS].find_one()["status"] == "launched"

        # Resolving by hand: a second resolve of the same letter says there is nothing open.
        db[mongo.DEAD_LETTERS].update_one({"_id": letter["_id"]}, {"$set": {"status": "open"}})
        assert cli("dead-letters", "resolve", str(letter["_id"]), "--note", "checked", env=env).returncode == 0
        again = cli("dead-letters", "resolve", str(letter["_id"]), env=env)
        assert again.returncode == 1 and "no open dead letter" in again.stderr


def test_report_redrive_runs_only_the_listed_subscribers(pipeline, instance):
    seeded = seed(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=10, now=NOW)
    shard = shard_of(seeded.subscription_ids[0], 8)
    members = [s for s in seeded.subscription_ids if shard_of(s, 8) == shard]
    from reporting_pipeline.operations.redrive import queue_redrive
    queue_redrive(pipeline.db, week=LAST_WEEK, shard=shard, subscription_ids=members[:1], reason="test")
    definitions = pipeline.definitions()
    request = definitions.resolve_sensor_def("redrive_sensor").evaluate_tick(
        build_sensor_context(instance=instance, definitions=definitions, resources=definitions.resources)).run_requests[0]
    result = definitions.resolve_job_def("weekly_reports_job").execute_in_process(
        instance=instance, partition_key=request.partition_key, run_config=request.run_config, tags=request.tags)
    assert result.success
    assert [r["subscription_id"] for r in pipeline.db[mongo.REPORTS].find()] == members[:1]


def test_failed_partitions_are_redriven_with_growing_delay_up_to_a_cap(pipeline, instance, monkeypatch):
    definitions = pipeline.definitions(redrive_base_delay_seconds=0, redrive_max_attempts=2)
    partition = report_partition_key(LAST_WEEK, "03")
    job = definitions.resolve_job_def("weekly_reports_job")
    sensor = definitions.resolve_sensor_def("redrive_sensor")
    # Break MongoDB for these runs: an unknown host fails the step and, after step retries, the run.
    broken = pipeline.definitions(mongodb_uri="mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200",
                                  retry_attempts=1).resolve_job_def("weekly_reports_job")

    def failing_run(tags):
        return broken.execute_in_process(instance=instance, partition_key=partition, tags=tags,
                                         raise_on_error=False, run_config={"ops": {}})

    assert not failing_run({}).success
    attempts = []
    for _ in range(4):
        requests = [r for r in sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=definitions, resources=definitions.resources))
                    .run_requests if r.job_name == "weekly_reports_job"]
        if not requests:
            break
        assert [r.partition_key for r in requests] == [partition]
        attempts.append(requests[0].tags["report/redrive_attempt"])
        assert not failing_run({**requests[0].tags, "dagster/run_key": requests[0].run_key}).success
    assert attempts == ["1", "2"]  # capped at 2, then the partition stays failed
    runs = instance.get_runs(RunsFilter(job_name=job.name, tags={"dagster/partition": partition}))
    assert len(runs) == 3 and all(r.status == DagsterRunStatus.FAILURE for r in runs)
    print(f"redrive: partition {partition} failed {len(runs)} times, redriven {len(attempts)} times, then left failed")


def test_redrive_waits_longer_after_each_attempt():
    delays = [sensors.redrive_delay(n, timedelta(minutes=5)) for n in range(6)]
    assert delays[:3] == [timedelta(minutes=5), timedelta(minutes=20), timedelta(minutes=80)]
    assert delays == sorted(delays)
    assert delays[-1] == sensors.REDRIVE_MAX_DELAY


def test_final_failure_alerts_operators_without_participant_data(pipeline, instance, monkeypatch):
    monkeypatch.setenv("OPS_EMAIL", "ops@example.org")
    definitions = pipeline.definitions()
    partition = report_partition_key(LAST_WEEK, "05")
    broken = pipeline.definitions(mongodb_uri="mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200",
                                  retry_attempts=1).resolve_job_def("weekly_reports_job")
    for attempt, expect_alert in ((1, False), (3, True)):  # REPORT_REDRIVE_MAX_ATTEMPTS: 3
        result = broken.execute_in_process(instance=instance, partition_key=partition, raise_on_error=False,
                                           tags={"report/redrive_attempt": str(attempt)})
        failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
        context = build_run_status_sensor_context(
            sensor_name="partition_failure_alert_sensor", dagster_event=failure, dagster_instance=instance,
            dagster_run=result.dagster_run,
        ).for_run_failure()
        before = len(pipeline.outbox.messages)
        definitions.resolve_sensor_def("partition_failure_alert_sensor")(
            context, smtp=definitions.resources["smtp"])
        assert len(pipeline.outbox.messages) - before == (1 if expect_alert else 0)
    alert = pipeline.outbox.messages[-1]
    assert alert["To"] == "ops@example.org" and partition in alert["Subject"]
    assert result.run_id in alert.get_body(("plain",)).get_content()


def test_a_failed_backfill_from_the_ui_is_seen_by_status_redriven_and_alerted(pipeline, instance, monkeypatch):
    """A backfill or materialization from the UI runs as Dagster's implicit asset job, not our job."""
    from dagster import AssetKey

    from reporting_pipeline.defs.runs import REPORTS, latest_run

    monkeypatch.setenv("OPS_EMAIL", "ops@example.org")
    definitions = pipeline.definitions(redrive_base_delay_seconds=0)
    broken = pipeline.definitions(mongodb_uri="mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200",
                                  retry_attempts=1, redrive_max_attempts=0)
    partition = report_partition_key(LAST_WEEK, "02")
    backfill_job = broken.resolve_implicit_global_asset_job_def()
    selection = [AssetKey(name) for name in ("fetched_records", "aggregated_tables", "report_pdfs")]
    failed = backfill_job.execute_in_process(instance=instance, partition_key=partition, asset_selection=selection,
                                             tags={"dagster/backfill": "ui-backfill-1"}, raise_on_error=False)
    assert not failed.success and failed.dagster_run.job_name.startswith("__ASSET_JOB")

    # Status sees it as the partition's latest report run.
    assert latest_run(instance, str(partition), REPORTS).dagster_run.run_id == failed.run_id
    # Redrive re-runs the partition with the report job.
    requests = definitions.resolve_sensor_def("redrive_sensor").evaluate_tick(build_sensor_context(
        instance=instance, definitions=definitions, resources=definitions.resources)).run_requests
    assert [(r.job_name, r.partition_key, r.tags["report/redrive_attempt"]) for r in requests] == [
        ("weekly_reports_job", str(partition), "1")]
    assert definitions.resolve_job_def("weekly_reports_job").execute_in_process(
        instance=instance, partition_key=requests[0].partition_key, tags=requests[0].tags).success
    # With no redrive left to try (REPORT_REDRIVE_MAX_ATTEMPTS=0), the failed backfill alerts the operators.
    failure = next(e for e in failed.all_events if e.event_type_value == "PIPELINE_FAILURE")
    context = build_run_status_sensor_context(
        sensor_name="partition_failure_alert_sensor", dagster_event=failure, dagster_instance=instance,
        dagster_run=failed.dagster_run).for_run_failure()
    broken.resolve_sensor_def("partition_failure_alert_sensor")(context, smtp=definitions.resources["smtp"])
    [alert] = pipeline.outbox.messages
    assert str(partition) in alert["Subject"] and failed.run_id in alert.get_body(("plain",)).get_content()

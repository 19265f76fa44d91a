"""The commands as a user runs them."""

import json
import os
import subprocess
import sys
from email import message_from_bytes

import pytest
from pypdf import PdfReader

from reporting_pipeline.local.seed import seed
from reporting_pipeline.services import mongo

from .conftest import pdf_text


def cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "reporting_pipeline.apps.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_demo_writes_reports_emails_and_summary(tmp_path, pipeline):
    out = tmp_path / "demo"
    done = cli("demo", "--subscribers", "5", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["subscribers"] == summary["reports_rendered"] == summary["emails_sent"] == 5
    assert summary["failures"] == 0 and summary["failed_runs"] == [] and summary["week"]
    pdfs = sorted((out / "reports").glob("*.pdf"))
    assert len(pdfs) == 5 and len(list((out / "outbox").glob("*.eml"))) == 5
    # Each in its participant's language (the seed's locales vary; a trial's definition approves some).
    titles = {"en": "Weekly report", "de-DE": "Wochenbericht", "ja-JP": "週次レポート", "fr-FR": "Rapport hebdomadaire",
              "es-ES": "Informe semanal"}
    for p in pdfs:
        lang = PdfReader(p).trailer["/Root"]["/Lang"]
        assert titles[lang] in pdf_text(p.read_bytes())
    assert "5 emails sent" in done.stdout and "[2/2] reports" in done.stdout and summary["shards"] == 2
    # Nothing identifying in what the demo printed: the recipients (as the mail server saw them) and the
    # participant ids (as a seed of the same five writes them) are nowhere in its output.
    seed(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=5, weeks=1, photos=False)
    identifiers = {message_from_bytes(p.read_bytes())["To"] for p in (out / "outbox").glob("*.eml")}
    identifiers |= {e["participant_id"] for e in pipeline.db[mongo.ENROLLMENTS].find()}
    assert len(identifiers) == 10
    assert [i for i in identifiers if i in done.stdout + done.stderr] == []


def test_demo_refuses_a_nonsense_subscriber_count(tmp_path):
    done = cli("demo", "--subscribers", "0", "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "--subscribers must be at least 1" in done.stderr


@pytest.mark.skipif(sys.version_info < (3, 13), reason="mongoeco's wire server needs Python >= 3.13")
def test_seed_command_is_idempotent_against_a_shared_database(pipeline):
    from reporting_pipeline.local.wire_mongo import MongoWireServer

    with MongoWireServer() as server:
        env = {**pipeline.env, "MONGODB_URI": server.uri}
        for _ in range(2):
            done = cli("seed", "--subscribers", "3", "--weeks", "1", env=env)
            assert done.returncode == 0, done.stderr[-2000:]
            assert "seeded 3 subscriptions" in done.stdout
        db = mongo.connect(server.uri)["reporting"]
        counts = {name: db[name].count_documents({}) for name in (mongo.SUBSCRIPTIONS, mongo.ENROLLMENTS, mongo.FILES)}
        assert counts[mongo.SUBSCRIPTIONS] == counts[mongo.ENROLLMENTS] == 3
        stored = sum(1 for page in pipeline.s3.get_paginator("list_objects_v2").paginate(
            Bucket=pipeline.bucket, Prefix="files/") for _ in page.get("Contents", []))
        assert stored == counts[mongo.FILES] > 0  # every file record has its object, and no more


@pytest.mark.parametrize("command", [["seed"], ["status"], ["api"], ["reconcile"]])
def test_a_bad_setting_is_one_line_naming_the_variable(command):
    env = {**os.environ, "REPORT_SHARDS": "eight"}
    done = subprocess.run([sys.executable, "-m", "reporting_pipeline.apps.cli", *command], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["reporting-pipeline: REPORT_SHARDS must be a whole number, got 'eight'"]


@pytest.mark.skipif(sys.version_info < (3, 13), reason="mongoeco's wire server needs Python >= 3.13")
def test_status_reports_each_shard_and_fails_while_the_week_is_incomplete(pipeline, instance):
    from reporting_pipeline.local.demo import run_weekly_cycle
    from reporting_pipeline.local.embedded import patched_env

    from .conftest import LAST_WEEK, NOW, seeded_wire_server

    with seeded_wire_server(pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=6, weeks=1) as (
            server, subscription_ids), patched_env({"MONGODB_URI": server.uri}):
        db = mongo.connect(server.uri)["reporting"]
        db[mongo.SUBSCRIPTIONS].update_one({"_id": subscription_ids[0]}, {"$set": {"email": "nope"}})
        run_weekly_cycle(pipeline.definitions(), instance, NOW)
        env = {**pipeline.env, "MONGODB_URI": server.uri}
        env.pop("DAGSTER_HOME", None)
        done = cli("status", "--week", LAST_WEEK, env=env)
        assert done.returncode == 1 and "INCOMPLETE" in done.stdout
        total = next(line for line in done.stdout.splitlines() if line.startswith("total")).split()
        assert total[1:] == ["6", "6", "5", "0", "1", "0"]  # subscribers, rendered, delivered, held, dead letters, links
        metrics = cli("status", "--week", LAST_WEEK, "--prometheus", env=env).stdout
        sent = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith("reporting_delivered{"))
        assert sent == 5 and 'reporting_delivery_latency_seconds_count{week="' + LAST_WEEK + '"} 5' in metrics

        db[mongo.DEAD_LETTERS].update_many({}, {"$set": {"status": "resolved"}})
        db[mongo.SUBSCRIPTIONS].update_one({"_id": subscription_ids[0]}, {"$set": {"status": "unsubscribed"}})
        done = cli("status", "--week", LAST_WEEK, env=env)
        assert done.returncode == 0 and done.stdout.strip().endswith("complete")

        # A delivery run died holding a claim: the week is not complete while it is held.
        db[mongo.DELIVERIES].update_one({"subscription_id": subscription_ids[1]},
                                        {"$set": {"status": "sending"}})
        done = cli("status", "--week", LAST_WEEK, env=env)
        total = next(line for line in done.stdout.splitlines() if line.startswith("total")).split()
        assert done.returncode == 1 and total[4] == "1" and "INCOMPLETE" in done.stdout
        db[mongo.DELIVERIES].update_one({"subscription_id": subscription_ids[1]}, {"$set": {"status": "sent"}})

        # A delivered report's object is gone (deleted by hand, or by a repair of old): its email's link is
        # dead, so the week is not complete, whatever the records say.
        gone = db[mongo.REPORTS].find_one({"subscription_id": subscription_ids[2]})
        kept = pipeline.s3.get_object(Bucket=pipeline.bucket, Key=gone["s3_key"])["Body"].read()
        pipeline.s3.delete_object(Bucket=pipeline.bucket, Key=gone["s3_key"])
        done = cli("status", "--week", LAST_WEEK, env=env)
        total = next(line for line in done.stdout.splitlines() if line.startswith("total")).split()
        assert done.returncode == 1 and total[1:] == ["5", "6", "5", "0", "0", "1"] and "INCOMPLETE" in done.stdout
        metrics = cli("status", "--week", LAST_WEEK, "--prometheus", env=env).stdout
        assert f'reporting_dead_links{{week="{LAST_WEEK}",shard="{gone["shard"]}"}} 1' in metrics
        pipeline.s3.put_object(Bucket=pipeline.bucket, Key=gone["s3_key"], Body=kept)
        done = cli("status", "--week", LAST_WEEK, env=env)
        assert done.returncode == 0 and done.stdout.strip().endswith("complete")


def test_failed_runs_metric_counts_report_and_delivery_runs_only_however_launched(pipeline, tmp_path):
    """`reporting_failed_runs` is about missing reports: a failed maintenance run is not one, a failed UI
    backfill of a partition is."""
    from dagster import AssetKey, instance_for_test

    from reporting_pipeline.defs.partitions import report_partition_key

    from .conftest import LAST_WEEK

    broken = pipeline.definitions(mongodb_uri="mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200", retry_attempts=1,
                                  step_retry_delay_seconds=0)
    home = tmp_path / "dagster"
    home.mkdir()
    with instance_for_test(temp_dir=str(home)) as instance:
        runs = [
            broken.resolve_job_def("maintenance_job").execute_in_process(instance=instance, raise_on_error=False),
            broken.resolve_job_def("weekly_reports_job").execute_in_process(
                instance=instance, partition_key=report_partition_key(LAST_WEEK, "01"), raise_on_error=False),
            broken.resolve_implicit_global_asset_job_def().execute_in_process(
                instance=instance, partition_key=report_partition_key(LAST_WEEK, "02"), raise_on_error=False,
                asset_selection=[AssetKey(n) for n in ("fetched_records", "aggregated_tables", "report_pdfs")]),
        ]
        assert not any(r.success for r in runs)
        done = cli("status", "--week", LAST_WEEK, "--prometheus", env={**pipeline.env, "DAGSTER_HOME": str(home)})
    assert "reporting_failed_runs 2" in done.stdout.splitlines(), done.stdout

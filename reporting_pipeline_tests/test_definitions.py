"""The Dagster definitions: they load, the schedule asks for the right runs, the sensor follows materializations."""

from datetime import UTC, datetime

from dagster import DagsterInstance, Definitions, build_schedule_context, build_sensor_context

from reporting_pipeline.defs.definitions import defs
from reporting_pipeline.defs.partitions import report_partitions, split_partition_key
from reporting_pipeline.local.seed import seed
from reporting_pipeline.settings import Settings
from reporting_pipeline.sharding import shard_ids

from .conftest import LAST_WEEK, NOW

report_partitions_def = report_partitions(Settings())


def test_definitions_load():
    Definitions.validate_loadable(defs)
    assert {a.key.to_user_string() for a in defs.resolve_all_asset_specs()} == {
        "fetched_records", "aggregated_tables", "report_pdfs", "report_deliveries",
        "report_retention", "storage_reconciliation"}
    assert defs.resolve_schedule_def("maintenance_schedule").cron_schedule == "0 4 * * *"
    for name in ("weekly_reports_job", "report_delivery_job"):
        assert defs.resolve_job_def(name).partitions_def == report_partitions_def


def evaluate_schedule(when: datetime, instance: DagsterInstance):
    schedule = defs.resolve_schedule_def("weekly_reports_schedule")
    context = build_schedule_context(instance=instance, scheduled_execution_time=when,
                                     repository_def=defs.get_repository_def())
    return schedule.evaluate_tick(context)


def test_schedule_requests_one_run_per_shard_for_the_week_that_just_ended(instance):
    schedule = defs.resolve_schedule_def("weekly_reports_schedule")
    assert schedule.cron_schedule == "0 2 * * 1" and schedule.execution_timezone == "UTC"
    tick = evaluate_schedule(datetime(2026, 11, 23, 2, 0, tzinfo=UTC), instance)  # Monday 02:00
    requests = tick.run_requests
    assert [split_partition_key(r.partition_key) for r in requests] == [(LAST_WEEK, s) for s in shard_ids(8)]
    valid = set(report_partitions_def.get_partition_keys(current_time=NOW))
    assert all(r.partition_key in valid for r in requests)
    assert len({r.run_key for r in requests}) == 8
    # A repeated or late tick for the same week asks for the same runs: run keys keep them from launching twice.
    again = evaluate_schedule(datetime(2026, 11, 24, 9, 0, tzinfo=UTC), instance)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in requests]


def test_schedule_skips_weeks_before_the_first_report_week(instance):
    tick = evaluate_schedule(datetime(2024, 6, 5, tzinfo=UTC), instance)
    assert not tick.run_requests and "before the first report week" in tick.skip_message


def test_delivery_sensor_launches_one_run_per_materialized_partition_and_never_repeats(pipeline, instance):
    seed(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=4, now=NOW)
    definitions = pipeline.definitions()
    sensor = definitions.resolve_sensor_def("report_delivery_sensor")

    def tick(cursor):
        return sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=cursor, definitions=definitions))

    first = tick(None)
    assert not first.run_requests  # nothing materialized yet

    job = definitions.resolve_job_def("weekly_reports_job")
    keys = [k for k in report_partitions_def.get_partition_keys(current_time=NOW)
            if split_partition_key(k) in {(LAST_WEEK, "01"), (LAST_WEEK, "05")}]
    for key in keys:
        assert job.execute_in_process(instance=instance, partition_key=key).success

    second = tick(first.cursor)
    assert sorted(r.partition_key for r in second.run_requests) == sorted(keys)
    assert sensor.job_name == "report_delivery_job"
    assert not tick(second.cursor).run_requests  # the cursor moved past them

    # A re-materialization is a new event: delivery runs again (and sends nothing twice, see the e2e tests).
    assert job.execute_in_process(instance=instance, partition_key=keys[0]).success
    third = tick(second.cursor)
    assert [r.partition_key for r in third.run_requests] == [keys[0]]
    assert third.run_requests[0].run_key != second.run_requests[0].run_key


def test_no_step_output_is_stored_through_dagster():
    """Every asset stores its own work and returns metadata: Dagster's IO manager is given nothing to pickle,
    and an asset that returned data would fail instead of having it written to the run's storage."""
    from dagster import MaterializeResult, asset, materialize

    from reporting_pipeline.defs.resources import NoStoredOutputs

    assert isinstance(defs.resources["io_manager"], NoStoredOutputs)

    @asset
    def leaks_data():
        return {"participant": "P-000001", "hr": [72, 75]}

    @asset
    def metadata_only() -> MaterializeResult:
        return MaterializeResult(metadata={"rendered": 3})

    with DagsterInstance.ephemeral() as instance:
        assert materialize([metadata_only], instance=instance, resources={"io_manager": NoStoredOutputs()}).success
        result = materialize([leaks_data], instance=instance, resources={"io_manager": NoStoredOutputs()},
                             raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error
    assert "leaks_data: assets of this pipeline return metadata only, not a dict" in failure.cause.message


def test_each_process_imports_only_the_libraries_it_uses():
    """The code server, the daemon's sensors and every delivery or maintenance run load the code location, and a
    report run whose shard needs workers only fetches and stores: pandas and reportlab (about a CPU-second and
    60 MiB) belong in the workers' forkserver, and in a run rendering a one-batch shard itself. Loading the code
    location (a code server's every start and reload) makes no S3 client and signs nothing: boto3 and dkimpy
    (about a quarter of a CPU-second) are imported by the processes that do."""
    import os
    import subprocess
    import sys

    renderer, clients = ("pandas", "reportlab", "PIL"), ("boto3", "dkim")
    unsigned = {k: v for k, v in os.environ.items() if not k.startswith("DKIM_")}  # a configured key is read at load
    script = ("import sys\n"
              "def loaded(names): return ' '.join(m for m in names if m in sys.modules)\n"
              "from reporting_pipeline.defs.definitions import build_definitions\n"
              "build_definitions()\n"
              f"print(loaded({renderer + clients!r}))\n"
              "import reporting_pipeline.stages.stream\n"
              f"print(loaded({renderer!r}))\n")
    code_location, report_run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                               check=True, env=unsigned).stdout.splitlines()
    assert (code_location, report_run) == ("", "")


def test_the_delivery_and_subscription_sensors_tick_as_configured():
    from reporting_pipeline.defs.definitions import build_definitions

    for interval in (30, 5):
        configured = build_definitions(Settings(sensor_interval_seconds=interval))
        assert {name: configured.resolve_sensor_def(name).minimum_interval_seconds
                for name in ("report_delivery_sensor", "subscription_sensor")} == {
            "report_delivery_sensor": interval, "subscription_sensor": interval}

from pathlib import Path

import boto3
import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.instance.config import dagster_instance_config
from dagster._core.scheduler.instigation import TickStatus
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from moto import mock_aws

ROOT = Path(__file__).resolve().parents[1]
LOGS_BUCKET = "reporting-dagster-logs"


def test_production_instance_config_passes_dagsters_validation():
    config, _ = dagster_instance_config(str(ROOT), "dagster.yaml")
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_retries"]["enabled"] is True
    assert "postgres" in config["storage"]


@pytest.fixture
def production_instance(tmp_path, monkeypatch):
    """The production dagster.yaml loaded by Dagster, SQLite standing in for PostgreSQL and moto for S3."""
    monkeypatch.setenv("DAGSTER_COMPUTE_LOGS_BUCKET", LOGS_BUCKET)
    monkeypatch.setenv("DAGSTER_COMPUTE_LOGS_PREFIX", "compute-logs")
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # moto intercepts the real endpoint
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    config["storage"] = {"sqlite": {"base_dir": str(tmp_path / "storage")}}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=LOGS_BUCKET)
        with DagsterInstance.from_config(str(tmp_path)) as instance:
            yield instance, s3


def test_production_instance_keeps_step_logs_in_s3_for_the_ui(production_instance):
    instance, s3 = production_instance
    manager = instance.compute_log_manager
    assert isinstance(manager, S3ComputeLogManager)

    # A step's output captured as a run worker does, then read back as the webserver does.
    log_key = manager.build_log_key_for_run("0" * 36, "build_reports")
    with manager.capture_logs(log_key):
        print("week 2026-11-16 shard 00: 24 reports stored", flush=True)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=LOGS_BUCKET)["Contents"]]
    assert keys and all(key.startswith("compute-logs/") for key in keys)
    assert b"24 reports stored" in manager.get_log_data(log_key).stdout


def test_production_instance_purges_sensor_ticks(production_instance):
    """Sensors tick every 30 s: skipped ticks go after a day, the rest stays (as Dagster reads the settings)."""
    instance, _ = production_instance
    assert instance.get_tick_retention_settings(InstigatorType.SENSOR) == {
        TickStatus.SKIPPED: 1, TickStatus.SUCCESS: 30, TickStatus.FAILURE: 90, TickStatus.STARTED: 90}
    assert set(instance.get_tick_retention_settings(InstigatorType.SCHEDULE).values()) == {365}

from pathlib import Path

from dagster._core.instance.config import dagster_instance_config

ROOT = Path(__file__).resolve().parents[1]


def test_production_instance_config_passes_dagsters_validation():
    config, _ = dagster_instance_config(str(ROOT), "dagster.yaml")
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_retries"]["enabled"] is True
    assert "postgres" in config["storage"]

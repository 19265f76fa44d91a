import os

import pytest

from reporting_pipeline import settings


def test_defaults(monkeypatch):
    for name in ("REPORT_TIMEZONE", "REPORT_SHARDS", "REPORT_LINK_TTL_HOURS", "REPORT_BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert settings.PipelineSettings.from_env() == settings.PipelineSettings("UTC", 8, 72, 50)


@pytest.mark.parametrize("name, value, message", [
    ("REPORT_LINK_TTL_HOURS", "169", "between 1 and 168"),
    ("REPORT_LINK_TTL_HOURS", "three", "whole number"),
    ("REPORT_SHARDS", "0", "between 1 and 4096"),
    ("REPORT_TIMEZONE", "Mars/Olympus", "not a known IANA timezone"),
])
def test_bad_values_are_refused_with_a_clear_message(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(settings.SettingsError, match=message):
        settings.PipelineSettings.from_env()


def test_worker_processes_follow_a_kubernetes_cpu_limit_not_the_node(tmp_path, monkeypatch):
    from reporting_pipeline.settings import available_cpus, worker_processes

    monkeypatch.setattr(os, "process_cpu_count", lambda: 64)
    limit = tmp_path / "cpu.max"
    limit.write_text("150000 100000\n")  # limits.cpu: 1500m
    assert available_cpus(str(limit)) == 2
    limit.write_text("max 100000\n")  # no limit
    assert available_cpus(str(limit)) == 64
    assert available_cpus(str(tmp_path / "absent")) == 64
    monkeypatch.setenv("REPORT_WORKER_PROCESSES", "3")
    assert worker_processes() == 3

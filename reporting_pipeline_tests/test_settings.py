import os
import re
from pathlib import Path

import pytest

from reporting_pipeline.settings import VARIABLES, Settings, SettingsError, available_cpus

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_when_nothing_is_set():
    settings = Settings.from_env({})
    assert (settings.timezone, settings.shards, settings.link_ttl_hours, settings.batch_size) == ("UTC", 8, 72, 50)
    assert settings.mongodb_uri == "mongodb://localhost:27017" and settings.orphan_grace_hours == 24
    assert Settings.from_env({"REPORT_SHARDS": "  ", "MONGODB_URI": ""}) == settings  # blank is unset


@pytest.mark.parametrize("name, value, message", [
    ("REPORT_LINK_TTL_HOURS", "169", "REPORT_LINK_TTL_HOURS must be between 1 and 168, got 169"),
    ("REPORT_LINK_TTL_HOURS", "three", "REPORT_LINK_TTL_HOURS must be a whole number, got 'three'"),
    ("REPORT_SHARDS", "0", "REPORT_SHARDS must be between 1 and 4096, got 0"),
    ("REPORT_TIMEZONE", "Mars/Olympus", "REPORT_TIMEZONE is not a known IANA timezone, got 'Mars/Olympus'"),
    ("REPORT_FIRST_WEEK", "2025-01-07", "REPORT_FIRST_WEEK must be a Monday"),
    ("SMTP_STARTTLS", "perhaps", "SMTP_STARTTLS must be true or false"),
    ("REPORT_RETRY_BASE_SECONDS", "nan", "REPORT_RETRY_BASE_SECONDS must be a finite number"),
    ("REPORTS_SSE", "rot13", "REPORTS_SSE must be AES256 or aws:kms"),
    ("REPORT_UNSUBSCRIBE_URL", "http://reports.example.org/u", "must be an https URL"),
])
def test_bad_values_are_refused_naming_the_variable(name, value, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env({name: value})


def test_secrets_stay_out_of_repr_and_errors():
    settings = Settings.from_env({"MONGODB_URI": "mongodb://user:s3cret@db/", "SMTP_PASSWORD": "s3cret"})
    assert "s3cret" not in repr(settings)


def test_https_unsubscribe_links_everywhere_but_loopback():
    assert Settings.from_env({"REPORT_UNSUBSCRIBE_URL": "https://reports.example.org/u"}).unsubscribe_url
    assert Settings.from_env({"REPORT_UNSUBSCRIBE_URL": "http://127.0.0.1:8080/v1/unsubscribe"}).unsubscribe_url


def test_constructed_settings_are_checked_like_the_environment():
    with pytest.raises(SettingsError, match="REPORT_TIMEZONE"):
        Settings(timezone="Nowhere/Special")


def test_every_variable_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [var.name for var in VARIABLES if f"`{var.name}`" not in readme]
    assert missing == []


def test_only_settings_reads_the_pipelines_variables():
    names = {var.name for var in VARIABLES}
    readers = []
    for path in (ROOT / "reporting_pipeline").rglob("*.py"):
        # The local stack (dev, embedded services) composes the environment of the processes it starts.
        if path.name in ("settings.py", "dev.py", "embedded.py") or "local" in path.parts:
            continue
        text = path.read_text()
        for name in names:
            if re.search(rf"environ(\.get)?\(?\[?[\"']{name}[\"']", text):
                readers.append(f"{path.name}:{name}")
    assert readers == []


def test_worker_processes_follow_a_kubernetes_cpu_limit_not_the_node(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "process_cpu_count", lambda: 64, raising=False)  # absent before Python 3.13
    limit = tmp_path / "cpu.max"
    limit.write_text("150000 100000\n")  # limits.cpu: 1500m
    assert available_cpus(str(limit)) == 2
    limit.write_text("max 100000\n")  # no limit
    assert available_cpus(str(limit)) == 64
    assert available_cpus(str(tmp_path / "absent")) == 64
    assert Settings.from_env({"REPORT_WORKER_PROCESSES": "3"}).worker_processes == 3


def test_half_a_dkim_configuration_is_refused_naming_the_variables():
    with pytest.raises(SettingsError, match="DKIM_DOMAIN, DKIM_PRIVATE_KEY"):
        Settings.from_env({"DKIM_SELECTOR": "reports2026"})
    with pytest.raises(SettingsError, match="SMTP_MAX_MESSAGES_PER_SECOND must be a positive number"):
        Settings.from_env({"SMTP_MAX_MESSAGES_PER_SECOND": "0"})

"""Settings read from the environment, with the defaults the pipeline runs on when nothing is set."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# SigV4 pre-signed URLs are valid for at most seven days.
MAX_LINK_TTL_HOURS = 168


class SettingsError(ValueError):
    """An environment variable holds a value the pipeline cannot run with."""


def _int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def report_timezone() -> str:
    """Timezone that defines where a report week starts and ends (REPORT_TIMEZONE, default UTC)."""
    name = os.environ.get("REPORT_TIMEZONE", "").strip() or "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(f"REPORT_TIMEZONE is not a known IANA timezone: {name!r}") from None
    return name


def shard_count() -> int:
    """Number of shards a week is split into (REPORT_SHARDS, default 8)."""
    return _int("REPORT_SHARDS", 8, 1, 4096)


def link_ttl_hours() -> int:
    """Lifetime of an emailed link (REPORT_LINK_TTL_HOURS, default 72, at most 168)."""
    return _int("REPORT_LINK_TTL_HOURS", 72, 1, MAX_LINK_TTL_HOURS)


def batch_size() -> int:
    """Subscribers handled together inside a shard run (REPORT_BATCH_SIZE, default 50)."""
    return _int("REPORT_BATCH_SIZE", 50, 1, 10_000)


def available_cpus(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a Kubernetes CPU limit).

    os.cpu_count() counts the node's cores; a pod limited to 2 CPUs on a 64-core node must not start 64 workers.
    """
    cpus = os.process_cpu_count() or 1
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 file (macOS, cgroup v1): affinity alone
    return cpus


def worker_processes() -> int:
    """Worker processes per step for downloads, aggregation and rendering (REPORT_WORKER_PROCESSES, default: the CPUs available)."""
    return _int("REPORT_WORKER_PROCESSES", available_cpus(), 1, 256)


def retention_days() -> int:
    """Days a stored report is kept (REPORT_RETENTION_DAYS, default 90)."""
    return _int("REPORT_RETENTION_DAYS", 90, 1, 3650)


def delivery_lease_seconds() -> int:
    """How long a delivery claim is held before another run may take it over (default 900)."""
    return _int("REPORT_DELIVERY_LEASE_SECONDS", 900, 1, 86_400)


@dataclass(frozen=True)
class PipelineSettings:
    """The non-secret knobs of one deployment."""

    timezone: str
    shards: int
    link_ttl_hours: int
    batch_size: int

    @classmethod
    def from_env(cls) -> "PipelineSettings":
        return cls(report_timezone(), shard_count(), link_ttl_hours(), batch_size())

"""Every setting of a deployment, read once from the environment into one validated object.

`Settings.from_env()` is the only place that reads the pipeline's environment variables. A bad value
fails at start with the variable's name; tests construct `Settings(...)` directly. The table
`VARIABLES` below is the whole configuration: name, field, default, and how a value is checked.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .compat import process_cpu_count

# SigV4 pre-signed URLs are valid for at most seven days.
MAX_LINK_TTL_HOURS = 168
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


class SettingsError(ValueError):
    """An environment variable holds a value the pipeline cannot run with; the message names it."""


def available_cpus(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a Kubernetes CPU limit).

    os.cpu_count() counts the node's cores; a pod limited to 2 CPUs on a 64-core node must not start 64 workers.
    """
    cpus = process_cpu_count() or 1
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 file (macOS, cgroup v1): affinity alone
    return cpus


# Parsers turn the variable's text into a value; checkers refuse a value of the right type but out of bounds.
def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number") from None
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _between(low, high) -> Callable:
    def check(value):
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
    return check


def _timezone(value: str) -> None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("is not a known IANA timezone") from None


def _monday(value: str) -> None:
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a date like 2025-01-06") from None
    if day.weekday() != 0:
        raise ValueError("must be a Monday (weeks start on Monday)")


def _http_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL")


def _one_click_url(value: str) -> None:
    """RFC 8058 wants the one-click unsubscribe URI to be HTTPS; plain http only on loopback (demo, dev)."""
    _http_url(value)
    parts = urlsplit(value)
    if parts.scheme != "https" and parts.hostname not in _LOOPBACK:
        raise ValueError("must be an https URL (RFC 8058); http is accepted only on localhost")


def _positive(value: float) -> None:
    if not value > 0:
        raise ValueError("must be a positive number")


def _sse(value: str) -> None:
    if value not in ("AES256", "aws:kms"):
        raise ValueError("must be AES256 or aws:kms")


@dataclass(frozen=True)
class Var:
    """One environment variable: where it goes, how its text is read, what values are allowed."""

    name: str
    field: str
    parse: Callable[[str], object] = str
    check: Callable[[object], None] | None = None
    help: str = ""


VARIABLES: tuple[Var, ...] = (
    Var("MONGODB_URI", "mongodb_uri", help="MongoDB (mongomock://NAME for in-process)"),
    Var("MONGODB_DATABASE", "mongodb_database", help="database name"),
    Var("REPORTS_BUCKET", "reports_bucket", help="bucket for files and reports"),
    Var("AWS_ENDPOINT_URL", "aws_endpoint_url", check=_http_url, help="S3-compatible endpoint"),
    Var("AWS_REGION", "aws_region", help="S3 region"),
    Var("REPORTS_SSE", "reports_sse", check=_sse, help="server-side encryption"),
    Var("REPORTS_KMS_KEY_ID", "reports_kms_key_id", help="KMS key for aws:kms"),
    Var("REPORTS_CREATE_BUCKET", "reports_create_bucket", _bool, help="create the bucket if missing"),
    Var("SMTP_HOST", "smtp_host", help="SMTP relay"),
    Var("SMTP_PORT", "smtp_port", _int, _between(1, 65535), help="SMTP port"),
    Var("SMTP_USERNAME", "smtp_username", help="SMTP user"),
    Var("SMTP_PASSWORD", "smtp_password", help="SMTP password"),
    Var("SMTP_STARTTLS", "smtp_starttls", _bool, help="STARTTLS on connect"),
    Var("EMAIL_FROM", "email_from", help="sender address"),
    Var("SMTP_MAX_MESSAGES_PER_SECOND", "smtp_max_messages_per_second", _float, _positive,
        help="cap on one delivery run's send rate"),
    Var("DKIM_SELECTOR", "dkim_selector", help="DKIM selector (signing needs all three DKIM_* settings)"),
    Var("DKIM_DOMAIN", "dkim_domain", help="DKIM signing domain (d=)"),
    Var("DKIM_PRIVATE_KEY", "dkim_private_key", help="DKIM RSA private key: PEM text or a file path"),
    Var("REPORT_TIMEZONE", "timezone", check=_timezone, help="where weeks start and end"),
    Var("REPORT_SHARDS", "shards", _int, _between(1, 4096), help="shards per week"),
    Var("REPORT_FIRST_WEEK", "first_week", check=_monday, help="first week offered as a partition"),
    Var("REPORT_LINK_TTL_HOURS", "link_ttl_hours", _int, _between(1, MAX_LINK_TTL_HOURS), help="link lifetime"),
    Var("REPORT_BATCH_SIZE", "batch_size", _int, _between(1, 10_000), help="subscribers per batch inside a run"),
    Var("REPORT_WORKER_PROCESSES", "worker_processes", _int, _between(1, 256), help="worker processes per run"),
    Var("REPORT_RETENTION_DAYS", "retention_days", _int, _between(1, 3650), help="days report objects are kept"),
    Var("REPORT_ORPHAN_GRACE_HOURS", "orphan_grace_hours", _int, _between(1, 24 * 30),
        help="age before reconciliation treats an unregistered object as an orphan"),
    Var("REPORT_DELIVERY_LEASE_SECONDS", "delivery_lease_seconds", _int, _between(1, 86_400),
        help="how long a delivery claim is held"),
    Var("REPORT_SENSOR_INTERVAL_SECONDS", "sensor_interval_seconds", _int, _between(1, 3600),
        help="how often the delivery and subscription sensors look for work"),
    Var("REPORT_UNSUBSCRIBE_URL", "unsubscribe_url", check=_one_click_url, help="base of one-click unsubscribe links"),
    Var("REPORT_RETRY_ATTEMPTS", "retry_attempts", _int, _between(1, 20), help="in-step tries of a transient error"),
    Var("REPORT_RETRY_BASE_SECONDS", "retry_base_seconds", _float, _between(0.0, 600.0), help="first backoff"),
    Var("REPORT_RETRY_CAP_SECONDS", "retry_cap_seconds", _float, _between(0.0, 3600.0), help="longest backoff"),
    Var("REPORT_STEP_RETRY_DELAY_SECONDS", "step_retry_delay_seconds", _float, _between(0.0, 3600.0),
        help="first delay of the step retry policy"),
    Var("REPORT_REDRIVE_MAX_ATTEMPTS", "redrive_max_attempts", _int, _between(0, 20), help="redrive cap"),
    Var("REPORT_REDRIVE_BASE_DELAY_SECONDS", "redrive_base_delay_seconds", _int, _between(0, 86_400),
        help="first redrive delay"),
    Var("OPS_EMAIL", "ops_email", help="where alerts go"),
    Var("DAGSTER_UI_URL", "dagster_ui_url", check=_http_url, help="the UI alerts link to"),
    Var("JWT_SECRET", "jwt_secret", help="HS256 key of API tokens"),
    Var("JWT_PUBLIC_KEY", "jwt_public_key", help="RS256 public key (PEM) of API tokens"),
    Var("JWT_ISSUER", "jwt_issuer", help="expected token issuer"),
    Var("JWT_AUDIENCE", "jwt_audience", help="expected token audience"),
    Var("API_DOCS", "api_docs", _bool, help="serve the API's /docs and /redoc pages"),
)


@dataclass(frozen=True)
class Settings:
    """The knobs of one deployment. Secrets are kept out of repr (logs, tracebacks)."""

    mongodb_uri: str = field(default="mongodb://localhost:27017", repr=False)
    mongodb_database: str = "reporting"
    reports_bucket: str = "clinical-reports"
    aws_endpoint_url: str | None = None
    aws_region: str | None = None
    reports_sse: str = "AES256"
    reports_kms_key_id: str | None = None
    reports_create_bucket: bool = False
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_username: str | None = field(default=None, repr=False)
    smtp_password: str | None = field(default=None, repr=False)
    smtp_starttls: bool = False
    email_from: str = "reports@localhost"
    smtp_max_messages_per_second: float | None = None
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    dkim_private_key: str | None = field(default=None, repr=False)
    timezone: str = "UTC"
    shards: int = 8
    first_week: str = "2025-01-06"
    link_ttl_hours: int = 72
    batch_size: int = 50
    worker_processes: int = field(default_factory=available_cpus)
    retention_days: int = 90
    orphan_grace_hours: int = 24
    delivery_lease_seconds: int = 900
    sensor_interval_seconds: int = 30
    unsubscribe_url: str = "http://localhost:8080/v1/unsubscribe"
    retry_attempts: int = 5
    retry_base_seconds: float = 0.5
    retry_cap_seconds: float = 30.0
    step_retry_delay_seconds: float = 10.0
    redrive_max_attempts: int = 3
    redrive_base_delay_seconds: int = 300
    ops_email: str | None = None
    dagster_ui_url: str = "http://localhost:3000"
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key: str | None = field(default=None, repr=False)
    jwt_issuer: str = "https://auth.example.org/"
    jwt_audience: str = "trial-reports"
    api_docs: bool = False

    def __post_init__(self):
        # Constructed in code (tests) or from the environment: the same checks, naming the variable.
        for var in VARIABLES:
            value = getattr(self, var.field)
            if var.check is not None and value is not None:
                try:
                    var.check(value)
                except ValueError as error:
                    shown = "(hidden)" if var.field in _SECRET_FIELDS else repr(value)
                    raise SettingsError(f"{var.name} {error}, got {shown}") from None
        self._check_dkim()

    def _check_dkim(self) -> None:
        from reporting_pipeline.services.dkim_sign import DkimConfigError, signer_for

        try:
            signer_for(self.dkim_selector, self.dkim_domain, self.dkim_private_key)
        except DkimConfigError as error:
            message = str(error)
            for name in ("dkim_selector", "dkim_domain", "dkim_private_key"):
                message = message.replace(name, name.upper())
            raise SettingsError(message) from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Settings from `environ` (default: os.environ); unset or blank variables take the defaults."""
        environ = os.environ if environ is None else environ
        values = {}
        for var in VARIABLES:
            text = (environ.get(var.name) or "").strip()
            if not text:
                continue
            try:
                values[var.field] = var.parse(text)
            except ValueError as error:
                shown = "(hidden)" if var.field in _SECRET_FIELDS else repr(text)
                raise SettingsError(f"{var.name} {error}, got {shown}") from None
        return cls(**{**values, **overrides})

    @property
    def redrive_base_delay(self) -> timedelta:
        return timedelta(seconds=self.redrive_base_delay_seconds)


_SECRET_FIELDS = {f.name for f in fields(Settings) if not f.repr}


def variable_of(field_name: str) -> str:
    """The environment variable behind a settings field (for messages and EnvVar)."""
    return next(v.name for v in VARIABLES if v.field == field_name)

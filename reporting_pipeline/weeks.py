"""Report weeks: Monday 00:00 to the next Monday 00:00 in the report timezone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

WEEK_KEY_FORMAT = "%Y-%m-%d"


@dataclass(frozen=True)
class Week:
    """One report week, keyed by the date of its Monday."""

    monday: date
    timezone: str

    @property
    def key(self) -> str:
        return self.monday.strftime(WEEK_KEY_FORMAT)

    @property
    def start(self) -> datetime:
        # Local midnight, built from the wall-clock date: correct across DST changes.
        return datetime.combine(self.monday, time(0), tzinfo=ZoneInfo(self.timezone))

    @property
    def end(self) -> datetime:
        return datetime.combine(self.monday + timedelta(days=7), time(0), tzinfo=ZoneInfo(self.timezone))

    @property
    def start_utc(self) -> datetime:
        return self.start.astimezone(UTC)

    @property
    def end_utc(self) -> datetime:
        return self.end.astimezone(UTC)

    @property
    def days(self) -> list[date]:
        return [self.monday + timedelta(days=i) for i in range(7)]

    @property
    def sunday(self) -> date:
        return self.monday + timedelta(days=6)

    def previous(self) -> "Week":
        return Week(self.monday - timedelta(days=7), self.timezone)

    def label(self) -> str:
        """Human-readable range, e.g. '16 Nov 2026 - 22 Nov 2026'."""
        return f"{self.monday:%d %b %Y} - {self.sunday:%d %b %Y}"

    @classmethod
    def from_key(cls, key: str, timezone: str) -> "Week":
        try:
            monday = datetime.strptime(key, WEEK_KEY_FORMAT).date()
        except ValueError:
            raise ValueError(f"week key must look like YYYY-MM-DD, got {key!r}") from None
        if monday.weekday() != 0:
            raise ValueError(f"week key {key!r} is not a Monday")
        return cls(monday, timezone)


def as_utc(moment: datetime) -> datetime:
    """MongoDB stores UTC; a client without tz_aware hands back naive datetimes."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def week_containing(moment: datetime, timezone: str) -> Week:
    """The week a moment falls in, judged by the wall clock in `timezone`."""
    if moment.tzinfo is None:
        raise ValueError("moment must be timezone-aware")
    local = moment.astimezone(ZoneInfo(timezone)).date()
    return Week(local - timedelta(days=local.weekday()), timezone)


def last_complete_week(now: datetime, timezone: str) -> Week:
    """The most recent week that has fully ended at `now`."""
    return week_containing(now, timezone).previous()

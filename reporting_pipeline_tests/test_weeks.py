from datetime import UTC, date, datetime, timedelta

import pytest

from reporting_pipeline.weeks import Week, last_complete_week, week_containing


def test_last_complete_week_is_the_monday_to_sunday_before_now():
    week = last_complete_week(datetime(2026, 11, 28, 12, tzinfo=UTC), "UTC")
    assert week.key == "2026-11-16"
    assert week.sunday == date(2026, 11, 22)
    # On Monday just after midnight the week that just ended is complete.
    assert last_complete_week(datetime(2026, 11, 23, 0, 0, 1, tzinfo=UTC), "UTC").key == "2026-11-16"
    assert last_complete_week(datetime(2026, 11, 22, 23, 59, tzinfo=UTC), "UTC").key == "2026-11-09"


def test_week_boundaries_follow_the_report_timezone():
    # 23:30 UTC on Sunday 22 Nov is already Monday 23 Nov in Berlin.
    moment = datetime(2026, 11, 22, 23, 30, tzinfo=UTC)
    assert week_containing(moment, "UTC").key == "2026-11-16"
    assert week_containing(moment, "Europe/Berlin").key == "2026-11-23"
    assert Week.from_key("2026-11-16", "Europe/Berlin").start_utc == datetime(2026, 11, 15, 23, tzinfo=UTC)


def test_week_with_a_dst_change_is_168_plus_one_hours_and_covers_seven_local_days():
    week = Week.from_key("2026-10-19", "Europe/Berlin")  # clocks go back on Sunday 25 Oct 2026
    assert week.end_utc - week.start_utc == timedelta(hours=169)
    assert week.start.hour == 0 and week.end.hour == 0
    assert [d.isoformat() for d in week.days][-1] == "2026-10-25"


def test_week_keys_must_be_mondays():
    with pytest.raises(ValueError, match="not a Monday"):
        Week.from_key("2026-11-17", "UTC")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        Week.from_key("16/11/2026", "UTC")

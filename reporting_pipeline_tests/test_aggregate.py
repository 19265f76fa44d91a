import math
from datetime import UTC, datetime

import pytest

from reporting_pipeline.errors import MalformedRecord, TextNotUtf8
from reporting_pipeline.stages.aggregate import aggregate_subscriber, excerpt_text, summarize
from reporting_pipeline.stages.fetch import FileItem, SubscriberWeek, parse_record
from reporting_pipeline.weeks import Week

WEEK = Week.from_key("2026-11-16", "UTC")


def rec(day, hour, metric, value, low=None, high=None, unit="mmHg"):
    return {
        "record_id": f"r{day}{hour}{metric}",
        "recorded_at": datetime(2026, 11, day, hour, tzinfo=UTC),
        "metric": metric, "value": value, "unit": unit, "ref_low": low, "ref_high": high,
    }


RECORDS = [
    # previous week: systolic mean 120
    rec(10, 8, "systolic_bp", 118.0, 90, 140), rec(12, 8, "systolic_bp", 122.0, 90, 140),
    # this week: 110, 130, 150 (one above range) on Mon, Mon, Wed; weight on Fri
    rec(16, 8, "systolic_bp", 110.0, 90, 140), rec(16, 20, "systolic_bp", 130.0, 90, 140),
    rec(18, 8, "systolic_bp", 150.0, 90, 140), rec(20, 7, "weight", 80.5, unit="kg"),
    # next Monday 00:00 is outside the week
    rec(23, 0, "systolic_bp", 999.0, 90, 140),
]


def test_summary_on_known_numbers():
    summary, daily, adherence = summarize(RECORDS, WEEK)
    bp = summary.set_index("metric").loc["systolic_bp"]
    assert (bp["count"], bp["mean"], bp["min"], bp["max"]) == (3, 130.0, 110.0, 150.0)
    assert bp["previous_mean"] == 120.0 and bp["change"] == 10.0
    assert bp["out_of_range"] == 1
    weight = summary.set_index("metric").loc["weight"]
    assert weight["count"] == 1 and math.isnan(weight["change"]) and weight["out_of_range"] == 0
    assert adherence == 3  # Monday, Wednesday, Friday
    monday = daily[(daily["metric"] == "systolic_bp")].iloc[0]
    assert monday["mean"] == 120.0 and str(monday["day"]) == "2026-11-16"


def test_adherence_counts_days_in_the_report_timezone():
    late = [rec(22, 23, "weight", 80.0, unit="kg")]  # Sunday 23:00 UTC = Monday 00:00 in Berlin
    assert summarize(late, Week.from_key("2026-11-16", "UTC"))[2] == 1
    assert summarize(late, Week.from_key("2026-11-16", "Europe/Berlin"))[2] == 0


def test_empty_week_gives_empty_tables():
    summary, daily, adherence = summarize(RECORDS[:2], WEEK)
    assert summary.empty and daily.empty and adherence == 0


@pytest.mark.parametrize("value, message", [
    (None, "value is missing"), ("high", "value is not a number"), (True, "value is not a number"),
    (float("nan"), "not finite"),
])
def test_malformed_records_are_refused_with_a_specific_error(value, message):
    raw = {"_id": "rec-1", "metric": "weight", "recorded_at": datetime(2026, 11, 16, tzinfo=UTC), "value": value}
    with pytest.raises(MalformedRecord, match=message) as info:
        parse_record(raw)
    assert info.value.ref == "rec-1" and info.value.code == "malformed_record"


def test_text_must_be_utf8_and_is_kept_literally():
    assert excerpt_text("Felt <b>fine</b> & ok\r\n".encode(), "n1") == "Felt <b>fine</b> & ok"
    with pytest.raises(TextNotUtf8, match="not valid UTF-8"):
        excerpt_text(b"caf\xe9", "n2")


def test_bad_files_become_issues_and_the_report_is_still_built():
    bundle = SubscriberWeek("sub_1", "a@example.org", "T1", "Trial", "P-1", "UTC", WEEK.key, "00",
                            records=RECORDS, files=[
                                FileItem("n1", "text", datetime(2026, 11, 17, tzinfo=UTC), "text/plain", b"\xff\xfe"),
                                FileItem("i1", "image", datetime(2026, 11, 17, tzinfo=UTC), "image/jpeg", b"nope"),
                                FileItem("n2", "text", datetime(2026, 11, 18, tzinfo=UTC), "text/plain", b"good"),
                            ])
    report = aggregate_subscriber(bundle, "UTC")
    assert [(i.code, i.ref) for i in report.issues] == [("text_not_utf8", "n1"), ("corrupt_image", "i1")]
    assert [e.text for e in report.excerpts] == ["good"]
    assert report.record_count == 4


def test_batch_summaries_equal_one_subscriber_at_a_time():
    from pandas.testing import assert_frame_equal

    from reporting_pipeline.stages.aggregate import summarize_many

    shifted = [{**r, "value": r["value"] + 7, "record_id": r["record_id"] + "b"} for r in RECORDS]
    lists = [RECORDS, [], shifted, RECORDS[:2], RECORDS[3:]]
    # Report definitions' metric orders: none (alphabetical), and weight first for some subscribers only.
    weight_first = {"weight": 0, "systolic_bp": 1}
    for orders in (None, [weight_first, None, None, weight_first, weight_first]):
        batch = summarize_many(lists, WEEK, orders)
        for n, ((summary, daily, adherence), records) in enumerate(zip(batch, lists, strict=True)):
            one_summary, one_daily, one_adherence = summarize(records, WEEK, orders and orders[n])
            assert adherence == one_adherence
            assert_frame_equal(summary, one_summary, check_dtype=False, check_index_type=False)
            assert_frame_equal(daily, one_daily, check_dtype=False, check_index_type=False)
        assert batch[2][0].set_index("metric").loc["systolic_bp", "mean"] == 137.0
        assert batch[0][0]["metric"].tolist() == (["weight", "systolic_bp"] if orders else ["systolic_bp", "weight"])
        assert batch[2][0]["metric"].tolist() == ["systolic_bp", "weight"]


def test_a_subscriber_that_breaks_the_batch_pass_fails_alone():
    from reporting_pipeline.stages.aggregate import aggregate_many

    def bundle(n, records):
        return SubscriberWeek(f"sub_{n}", "a@example.org", "T1", "Trial", f"P-{n}", "UTC", WEEK.key, "00",
                              records=records)

    poison = [{**RECORDS[2], "value": "not a number"}]  # what parse_record would refuse, got past it
    results = aggregate_many([bundle(1, RECORDS), bundle(2, poison), bundle(3, RECORDS[:3])], "UTC")
    assert isinstance(results[1], Exception)
    assert [r.subscription_id for r in (results[0], results[2])] == ["sub_1", "sub_3"]
    assert results[0].summary.set_index("metric").loc["systolic_bp", "count"] == 3
    assert results[2].summary.set_index("metric").loc["systolic_bp", "count"] == 1

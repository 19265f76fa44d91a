import io
import random
from datetime import UTC, datetime

from pypdf import PdfReader

from reporting_pipeline.local.seed import photo_bytes
from reporting_pipeline.stages.aggregate import aggregate_subscriber
from reporting_pipeline.stages.fetch import FileItem, SubscriberWeek
from reporting_pipeline.stages.render import NO_DATA_TEXT, render_report

from .conftest import pdf_image_count, pdf_text
from .test_aggregate import RECORDS, WEEK

DIARY = 'Felt <b>dizzy</b> & tired; "nurse" said <script>x</script> it\'s fine\nsecond line'


def bundle(**overrides) -> SubscriberWeek:
    values = dict(
        subscription_id="sub_1", email="a@example.org", trial_id="T1", trial_name="Heart <Study> & Co",
        participant_id="P-000042", timezone="UTC", week_key=WEEK.key, shard_id="03", records=RECORDS,
        files=[
            FileItem("n1", "text", datetime(2026, 11, 17, 21, tzinfo=UTC), "text/plain", DIARY.encode()),
            FileItem("p1", "image", datetime(2026, 11, 18, 12, tzinfo=UTC), "image/jpeg", photo_bytes(random.Random(3))),
        ],
    )
    values.update(overrides)
    return SubscriberWeek(**values)


def test_report_shows_title_participant_week_values_and_page_numbers():
    pdf, pages = render_report(aggregate_subscriber(bundle(), "UTC"))
    text = pdf_text(pdf)
    assert "Heart <Study> & Co" in text
    assert "P-000042" in text
    assert "Week of Nov 16 – 22, 2026" in text  # English (CLDR "en"): no locale on the enrollment, no trial default
    # systolic: n=3 mean 130.0 min 110.0 max 150.0 change +10.0 vs last week, 1 outside range
    for value in ("130.0", "110.0", "150.0", "+10.0", "80.5"):
        assert value in text
    assert "Days with entries: 3 of 7" in text
    assert len(PdfReader(io.BytesIO(pdf)).pages) == pages
    assert f"Page {pages} of {pages}" in text


def test_diary_markup_is_printed_literally_not_interpreted():
    text = pdf_text(render_report(aggregate_subscriber(bundle(), "UTC"))[0])
    assert "Felt <b>dizzy</b> & tired;" in text
    assert "<script>x</script>" in text


def test_photos_are_embedded():
    pdf, _ = render_report(aggregate_subscriber(bundle(), "UTC"))
    assert pdf_image_count(pdf) == 1
    assert pdf_image_count(render_report(aggregate_subscriber(bundle(files=[]), "UTC"))[0]) == 0


def test_week_without_data_gets_a_clear_page():
    pdf, pages = render_report(aggregate_subscriber(bundle(records=[], files=[]), "UTC"))
    text = pdf_text(pdf)
    assert pages == 1 and NO_DATA_TEXT in text and "P-000042" in text
    assert "Summary" not in text


def test_rendering_is_deterministic_so_reruns_store_identical_bytes():
    first, _ = render_report(aggregate_subscriber(bundle(), "UTC"))
    second, _ = render_report(aggregate_subscriber(bundle(), "UTC"))
    assert first == second


def test_left_out_items_are_mentioned_without_details():
    broken = bundle(files=[FileItem("n9", "text", datetime(2026, 11, 17, tzinfo=UTC), "text/plain", b"\xff")])
    text = pdf_text(render_report(aggregate_subscriber(broken, "UTC"))[0])
    assert "1 item could not be included in this report" in text


def test_process_pool_renders_the_same_bytes_and_returns_failures_in_place():
    from reporting_pipeline.stages.render import render_report
    from reporting_pipeline.stages.workers import WorkerPool, each

    good = aggregate_subscriber(bundle(), "UTC")
    bad = aggregate_subscriber(bundle(records=[{**RECORDS[2], "unit": "kg " * 40000}]), "UTC")
    reports = [good, good, bad, good, good]
    with WorkerPool(workers=2) as pool:
        results = pool.map(each(render_report), reports)
    serial, _ = render_report(good)
    assert [r[0] == serial for i, r in enumerate(results) if i != 2] == [True] * 4
    assert type(results[2]).__name__ == "LayoutError"

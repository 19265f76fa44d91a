"""Charts are drawn onto the page by `chartdraw.paint`, not by ReportLab's renderPDF: every page must come out
the same as renderPDF's, pixel for pixel, as poppler (an independent reader) rasterizes it."""

from __future__ import annotations

import io
import subprocess

import pytest
from reportlab.graphics.shapes import Circle, Group, Line, PolyLine, Rect, String
from reportlab.lib import colors
from reportlab.pdfgen import canvas as pdfcanvas

from reporting_pipeline.stages import render
from reporting_pipeline.stages.aggregate import aggregate_subscriber
from reporting_pipeline.stages.chartdraw import Unsupported, paint
from reporting_pipeline.stages.render import render_report_checked

from .conftest import needs_poppler
from .test_aggregate import RECORDS, rec
from .test_render import bundle


def pixels(pdf: bytes, tmp_path, name: str) -> list[bytes]:
    """Each page as poppler draws it at 150 dpi (anti-aliased: a shifted or thicker line changes pixels)."""
    (tmp_path / f"{name}.pdf").write_bytes(pdf)
    subprocess.run(["pdftoppm", "-r", "150", str(tmp_path / f"{name}.pdf"), str(tmp_path / name)], check=True)
    return [p.read_bytes() for p in sorted(tmp_path.glob(f"{name}-*.ppm"))]


def with_render_pdf(monkeypatch):
    """Charts drawn by ReportLab's own renderer, as before chartdraw."""
    def decline(drawing, canvas):
        raise Unsupported("the reference rendering")
    monkeypatch.setattr(render, "paint", decline)


NEGATIVE = [rec(16, 8, "temperature_delta", -0.4, -0.5, 0.5, unit="°C"),
            rec(17, 8, "temperature_delta", 0.25, -0.5, 0.5, unit="°C"),
            rec(21, 8, "temperature_delta", -1.5, -0.5, 0.5, unit="°C")]
WEEKS = {
    "English, with reference ranges": bundle(),
    "German, decimal commas": bundle(language="de", records=RECORDS + NEGATIVE),
    "Japanese, day labels laid over the chart": bundle(language="ja", records=RECORDS + NEGATIVE),
    "one entry, no range": bundle(records=[rec(19, 8, "steps", 4200.0, unit="steps")]),
}


@needs_poppler
@pytest.mark.parametrize("week", WEEKS)
def test_reports_look_the_same_pixel_for_pixel_as_with_reportlabs_renderer(week, tmp_path, monkeypatch):
    report = aggregate_subscriber(WEEKS[week], "UTC")
    painted, pages, issues = render_report_checked(report)
    with monkeypatch.context() as patch:
        with_render_pdf(patch)
        reference, reference_pages, reference_issues = render_report_checked(report)
    assert painted != reference  # the charts really were drawn another way
    assert (pages, issues) == (reference_pages, reference_issues)
    assert pixels(painted, tmp_path, "painted") == pixels(reference, tmp_path, "reference")


def chart_page(drawing) -> bytes:
    out = io.BytesIO()
    page = pdfcanvas.Canvas(out, pagesize=(drawing.width + 20, drawing.height + 20), invariant=1,
                              pageCompression=0)
    drawing.drawOn(page, 10, 10)
    page.showPage()
    page.save()
    return out.getvalue()


@needs_poppler
def test_a_chart_without_entries_and_a_shape_paint_does_not_know_look_as_renderpdf_draws_them(tmp_path, monkeypatch):
    report = aggregate_subscriber(bundle(), "UTC")
    empty = render._chart(report, "heart_rate", "bpm", 50, 100)  # no heart rate this week: "no entries"
    framed = render._chart(report, "systolic_bp", "mmHg", 90, 140)
    framed.add(Rect(5, 5, 40, 20, fillColor=colors.yellow, strokeColor=None))  # not a shape a LinePlot makes
    for n, drawing in enumerate((empty, framed)):
        painted = chart_page(drawing)
        with monkeypatch.context() as patch:
            with_render_pdf(patch)
            reference = chart_page(drawing)
        assert pixels(painted, tmp_path, f"painted{n}") == pixels(reference, tmp_path, f"reference{n}")
    # The frame was drawn at all, by renderPDF: paint declined before putting anything on the page.
    assert b"1 1 0 rg" in painted  # yellow


@needs_poppler
def test_each_shape_and_state_it_draws_comes_out_as_renderpdf_draws_it(tmp_path, monkeypatch):
    """Beyond what today's charts use: every anchor, dash form, colour switched off, inherited and nested state."""
    render._fonts()  # registers the report font the strings use
    drawing = render._Chart(320, 220)
    drawing.initialFontName, drawing.initialFontSize = render.FONT, 9
    outer = Group(transform=(1, 0, 0, 1, 20, 30), fillColor=colors.darkgreen, fontSize=14, strokeWidth=2)
    for n, anchor in enumerate(("start", "middle", "end")):
        outer.add(String(150, 150 - 20 * n, f"anchor {anchor}", textAnchor=anchor))
    outer.add(Line(0, 90, 280, 90, strokeDashArray=[6, 3], strokeColor=colors.orange))
    outer.add(Line(0, 80, 280, 80, strokeDashArray=(2, [4, 2]), strokeLineCap=1, strokeColor=colors.red))
    outer.add(PolyLine([0, 0, 60, 50, 120, 10, 180, 60], strokeWidth=5, strokeLineJoin=1, strokeColor=colors.blue))
    outer.add(Circle(220, 30, 12, strokeColor=None, fillColor=colors.red))  # filled only
    outer.add(Circle(260, 30, 12, fillColor=None, strokeColor=colors.blue))  # outlined only
    outer.add(Line(200, 0, 280, 60))  # after the two: renderPDF's stroke and fill switches as they left them
    inner = Group(String(0, 0, "nested, rotated"), transform=(0.8, 0.6, -0.6, 0.8, 200, 100))
    outer.add(inner)
    drawing.add(outer)
    drawing.add(String(5, 5, "outside the group", fillColor=colors.purple))
    painted = chart_page(drawing)
    with monkeypatch.context() as patch:
        with_render_pdf(patch)
        reference = chart_page(drawing)
    assert painted != reference
    assert pixels(painted, tmp_path, "painted") == pixels(reference, tmp_path, "reference")


def test_paint_declines_a_drawing_it_does_not_know_before_drawing_anything():
    drawing = render._chart(aggregate_subscriber(bundle(), "UTC"), "systolic_bp", "mmHg", 90, 140)
    drawing.add(Rect(5, 5, 40, 20, fillColor=colors.yellow))
    page = pdfcanvas.Canvas(io.BytesIO())
    before = list(page._code)
    with pytest.raises(Unsupported, match="Rect"):
        paint(drawing, page)
    assert page._code == before and page._codeStack == []

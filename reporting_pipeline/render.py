"""Render stage: one subscriber's aggregated week as a PDF (reportlab), deterministic byte for byte."""

from __future__ import annotations

import io
import math
from xml.sax.saxutils import escape

from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing, Line, String
from reportlab.graphics.widgets.markers import makeMarker
from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas as pdfcanvas
from reportlab.platypus import (
    Image,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from .aggregate import AggregatedReport, local_date

# Attribute validation of chart shapes is a development aid that costs a sixth of the render time;
# the tests render every layout, so a wrong attribute is caught there (reportlab documents the switch).
rl_config.shapeChecking = 0

# Vera ships inside reportlab, so every machine renders the same glyphs, and it covers far more
# than the 8-bit standard fonts do.
FONT, FONT_BOLD = "Vera", "VeraBd"
pdfmetrics.registerFont(TTFont(FONT, "Vera.ttf"))
pdfmetrics.registerFont(TTFont(FONT_BOLD, "VeraBd.ttf"))

NO_DATA_TEXT = "No measurements, notes or photos were recorded for this week."
HEADER = ["Metric", "Unit", "Entries", "Mean", "Min", "Max", "Change vs last week", "Outside range"]


def format_value(value) -> str:
    """Numbers as the report prints them: one decimal place; a dash when there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}"


def metric_label(metric: str) -> str:
    """'systolic_bp' -> 'Systolic bp': readable without a lookup table that would go stale."""
    text = metric.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def format_change(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "no data last week"
    return f"{value:+.1f}"


def literal(text: str) -> str:
    """Paragraph markup for text that must print exactly as written (no tags, no entities)."""
    return escape(text).replace("\n", "<br/>")


def _styles():
    base = getSampleStyleSheet()
    return {
        "title": ParagraphStyle("title", parent=base["Title"], fontName=FONT_BOLD, fontSize=18, alignment=TA_LEFT),
        "subtitle": ParagraphStyle("subtitle", parent=base["Normal"], fontName=FONT, fontSize=11, leading=15),
        "h2": ParagraphStyle("h2", parent=base["Heading2"], fontName=FONT_BOLD, fontSize=13, spaceBefore=10),
        "body": ParagraphStyle("body", parent=base["Normal"], fontName=FONT, fontSize=9.5, leading=13),
        "small": ParagraphStyle("small", parent=base["Normal"], fontName=FONT, fontSize=8, leading=10,
                                textColor=colors.grey),
        "cell": ParagraphStyle("cell", parent=base["Normal"], fontName=FONT, fontSize=8.5, leading=10),
    }


class _NumberedCanvas(pdfcanvas.Canvas):
    """Writes 'Page X of Y' once the total is known (pages are buffered until save)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pages = []

    def showPage(self):
        self._pages.append(dict(self.__dict__))
        self._startPage()

    def save(self):
        total = len(self._pages)
        for state in self._pages:
            self.__dict__.update(state)
            self.setFont(FONT, 8)
            self.setFillColor(colors.grey)
            self.drawRightString(A4[0] - 18 * mm, 12 * mm, f"Page {self._pageNumber} of {total}")
            self.drawString(18 * mm, 12 * mm, "Confidential: for the named participant only")
            super().showPage()
        super().save()


def _summary_table(report: AggregatedReport, styles) -> Table:
    rows = [[Paragraph(f"<b>{label}</b>", styles["cell"]) for label in HEADER]]
    for row in report.summary.itertuples(index=False):
        rows.append([
            Paragraph(literal(metric_label(row.metric)), styles["cell"]),
            Paragraph(literal(str(row.unit)), styles["cell"]),
            str(int(row.count)),
            format_value(row.mean),
            format_value(row.min),
            format_value(row.max),
            format_change(row.change),
            str(int(row.out_of_range)),
        ])
    table = Table(rows, repeatRows=1, colWidths=[40 * mm, 17 * mm, 16 * mm, 17 * mm, 17 * mm, 17 * mm, 28 * mm, 20 * mm])
    style = [
        ("FONT", (0, 0), (-1, 0), FONT_BOLD, 8),
        ("FONT", (0, 1), (-1, -1), FONT, 8.5),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef5")),
        ("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#b0b8c0")),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("ALIGN", (2, 1), (-1, -1), "RIGHT"),
    ]
    for i, row in enumerate(report.summary.itertuples(index=False), start=1):
        if int(row.out_of_range):
            style.append(("TEXTCOLOR", (7, i), (7, i), colors.HexColor("#b3261e")))
    table.setStyle(TableStyle(style))
    return table


def _chart(report: AggregatedReport, metric: str, unit: str, ref_low, ref_high) -> Drawing:
    """Daily mean of one metric across the seven days of the week, with its reference range."""
    days = report.week.days
    points = [
        (days.index(row.day), float(row.mean))
        for row in report.daily[report.daily["metric"] == metric].itertuples(index=False)
        if row.day in days
    ]
    width, height = 170 * mm, 48 * mm
    drawing = Drawing(width, height)
    label = metric_label(metric)
    drawing.add(String(0, height - 10, f"{label} ({unit}), daily mean" if unit else f"{label}, daily mean",
                       fontName=FONT_BOLD, fontSize=9))
    plot = LinePlot()
    plot.x, plot.y, plot.width, plot.height = 30, 18, width - 50, height - 38
    plot.data = [points or [(0, 0)]]
    plot.lines[0].strokeColor = colors.HexColor("#1f5fa8")
    plot.lines[0].symbol = makeMarker("FilledCircle", size=4)
    values = [v for _, v in points] + [v for v in (ref_low, ref_high) if v is not None and not math.isnan(v)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (high - low) * 0.15 or max(abs(high) * 0.1, 1.0)
    plot.yValueAxis.valueMin, plot.yValueAxis.valueMax = low - pad, high + pad
    plot.xValueAxis.valueMin, plot.xValueAxis.valueMax = -0.3, 6.3
    plot.xValueAxis.valueSteps = list(range(7))
    plot.xValueAxis.labelTextFormat = lambda i: days[int(round(i))].strftime("%a %d") if 0 <= round(i) < 7 else ""
    for axis in (plot.xValueAxis, plot.yValueAxis):
        axis.labels.fontName, axis.labels.fontSize = FONT, 7
    drawing.add(plot)
    for bound in (ref_low, ref_high):
        if bound is not None and not math.isnan(bound) and plot.yValueAxis.valueMin <= bound <= plot.yValueAxis.valueMax:
            y = plot.y + (bound - plot.yValueAxis.valueMin) / (plot.yValueAxis.valueMax - plot.yValueAxis.valueMin) * plot.height
            drawing.add(Line(plot.x, y, plot.x + plot.width, y, strokeColor=colors.HexColor("#c77700"),
                             strokeDashArray=[3, 2], strokeWidth=0.6))
    if not points:
        drawing.add(String(plot.x + 10, plot.y + plot.height / 2, "no entries", fontName=FONT, fontSize=8))
    return drawing


def _photos(report: AggregatedReport, styles) -> Table:
    cells = []
    for thumb in report.thumbnails:
        scale = min(52 * mm / thumb.width, 52 * mm / thumb.height)
        image = Image(io.BytesIO(thumb.jpeg), width=thumb.width * scale, height=thumb.height * scale)
        caption = Paragraph(f"{local_date(thumb.recorded_at, report.timezone):%a %d %b}", styles["small"])
        cells.append([image, caption])
    rows = [cells[i:i + 3] for i in range(0, len(cells), 3)]
    rows[-1] += [""] * (3 - len(rows[-1]))
    table = Table(rows, colWidths=[58 * mm] * 3)
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    return table


def render_report(report: AggregatedReport) -> tuple[bytes, int]:
    """Render the PDF; returns (bytes, page count). Same input, same bytes."""
    styles = _styles()
    week = report.week
    story = [
        Paragraph(f"Weekly report: {literal(report.trial_name)}", styles["title"]),
        Paragraph(
            f"Participant <b>{literal(report.participant_id)}</b><br/>Week of {week.label()}",
            styles["subtitle"],
        ),
        Spacer(1, 6 * mm),
    ]
    if not report.has_data:
        story += [Paragraph("Nothing recorded this week", styles["h2"]), Paragraph(NO_DATA_TEXT, styles["body"])]
    else:
        story += [
            Paragraph("Summary", styles["h2"]),
            Paragraph(f"Days with entries: {report.adherence_days} of 7. "
                      f"Measurements this week: {report.record_count}.", styles["body"]),
            Spacer(1, 3 * mm),
        ]
        if not report.summary.empty:
            story += [_summary_table(report, styles), Paragraph("Charts", styles["h2"])]
            for row in report.summary.itertuples(index=False):
                story += [KeepTogether(_chart(report, row.metric, row.unit, row.ref_low, row.ref_high)),
                          Spacer(1, 3 * mm)]
        if report.thumbnails:
            story.append(KeepTogether([Paragraph("Photos", styles["h2"]), _photos(report, styles)]))
        if report.excerpts:
            for i, excerpt in enumerate(report.excerpts):
                block = [
                    Paragraph(f"{local_date(excerpt.recorded_at, report.timezone):%A %d %B}", styles["small"]),
                    Paragraph(literal(excerpt.text), styles["body"]),
                    Spacer(1, 2 * mm),
                ]
                # The heading stays with the first entry instead of ending a page alone.
                story.append(KeepTogether(([Paragraph("Diary", styles["h2"])] if i == 0 else []) + block))
    if report.issues:
        story += [Spacer(1, 4 * mm), Paragraph(
            f"{len(report.issues)} item(s) could not be included in this report; the study team has been notified.",
            styles["small"])]
    out = io.BytesIO()
    doc = SimpleDocTemplate(
        out,
        pagesize=A4,
        leftMargin=18 * mm, rightMargin=18 * mm, topMargin=16 * mm, bottomMargin=20 * mm,
        title="Weekly trial report",
        author="Clinical trial reporting",
        invariant=1,  # fixed creation date and document id: a rerun yields identical bytes
    )
    doc.build(story, canvasmaker=_NumberedCanvas)
    return out.getvalue(), doc.page

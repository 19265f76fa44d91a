"""Render stage: one subscriber's aggregated week as a PDF (reportlab), deterministic byte for byte.

Text the report itself writes (headings, labels, dates) is English and set with ReportLab's
Paragraph in the primary font. Text that comes from data (trial name, participant id, metric
names and units, diary entries) may be in any script and is set with `scripttext.ScriptText`,
which falls back across fonts, shapes and reorders it; a character no font has is drawn as
U+FFFD and reported as a `missing_glyph` issue by `render_report_checked`.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache
from typing import Sequence
from xml.sax.saxutils import escape

from reportlab import rl_config
from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing, Line, String
from reportlab.graphics.widgets.markers import makeMarker
from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT, TA_RIGHT
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

from reporting_pipeline.errors import Issue

from .aggregate import AggregatedReport, local_date
from .fonts import FontSet, load_fonts
from .scripttext import ScriptText, Span

# Attribute validation of chart shapes is a development aid that costs a sixth of the render time;
# the tests render every layout, so a wrong attribute is caught there (reportlab documents the switch).
rl_config.shapeChecking = 0

# The report's own English text uses the primary font of the chain (Noto Sans, else DejaVu Sans,
# else Vera), registered with ReportLab under these names on first use, once per process.
FONT, FONT_BOLD = "ReportSans", "ReportSans-Bold"

# Text colours, all at least WCAG AA (4.5:1) on white and on the table header's background.
TEXT = colors.black
MUTED_TEXT = colors.HexColor("#595959")  # 7:1 on white; reportlab's grey (#808080) is only 3.9:1
ALERT_TEXT = colors.HexColor("#b3261e")
HEADER_BACKGROUND = colors.HexColor("#e8eef5")
PAGE_BACKGROUND = colors.white

MISSING_GLYPH = "missing_glyph"
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


@lru_cache(maxsize=8)
def _fonts(font_files: tuple[str, ...] = ()) -> FontSet:
    """The fallback chains, and the primary font registered with ReportLab: once per process."""
    fonts = load_fonts(font_files)
    if FONT not in pdfmetrics.getRegisteredFontNames():
        # ReportLab embeds TrueType outlines only: the first TrueType font of each chain.
        regular = next(f for f in fonts.regular if not f.is_cff)
        bold = next(f for f in fonts.bold if not f.is_cff)
        pdfmetrics.registerFont(TTFont(FONT, regular.path, subfontIndex=regular.index))
        pdfmetrics.registerFont(TTFont(FONT_BOLD, bold.path, subfontIndex=bold.index))
    return fonts


def _styles():
    base = getSampleStyleSheet()
    return {
        "title": ParagraphStyle("title", parent=base["Title"], fontName=FONT_BOLD, fontSize=18, alignment=TA_LEFT,
                                textColor=TEXT),
        "subtitle": ParagraphStyle("subtitle", parent=base["Normal"], fontName=FONT, fontSize=11, leading=15,
                                   textColor=TEXT),
        "h2": ParagraphStyle("h2", parent=base["Heading2"], fontName=FONT_BOLD, fontSize=13, spaceBefore=10,
                             textColor=TEXT),
        "body": ParagraphStyle("body", parent=base["Normal"], fontName=FONT, fontSize=9.5, leading=13, textColor=TEXT),
        "small": ParagraphStyle("small", parent=base["Normal"], fontName=FONT, fontSize=8, leading=10,
                                textColor=MUTED_TEXT),
        "cell": ParagraphStyle("cell", parent=base["Normal"], fontName=FONT, fontSize=8.5, leading=10, textColor=TEXT),
        "cell_number": ParagraphStyle("cell_number", parent=base["Normal"], fontName=FONT, fontSize=8.5, leading=10,
                                      textColor=TEXT, alignment=TA_RIGHT),
        "cell_alert": ParagraphStyle("cell_alert", parent=base["Normal"], fontName=FONT, fontSize=8.5, leading=10,
                                     textColor=ALERT_TEXT, alignment=TA_RIGHT),
        "chart_title": ParagraphStyle("chart_title", parent=base["Normal"], fontName=FONT_BOLD, fontSize=9,
                                      leading=12, textColor=TEXT),
        "cell_head": ParagraphStyle("cell_head", parent=base["Normal"], fontName=FONT_BOLD, fontSize=8, leading=10,
                                    textColor=TEXT),
    }


class _Data:
    """Builds ScriptText flowables for text from data, and collects what could not be drawn."""

    def __init__(self, fonts: FontSet, lang: str):
        self.fonts, self.lang = fonts, lang
        self.missing: dict[str, set[int]] = {}

    def text(self, ref: str, spans: list[Span] | str, style: ParagraphStyle) -> ScriptText:
        """Data alone takes its direction from its first strong character (an Arabic diary entry is
        right to left); data set into our English words is isolated in a left-to-right line."""
        direction = "auto"
        if isinstance(spans, str):
            spans = [Span(spans)]
        elif any(not s.isolate for s in spans):
            direction = "ltr"
        flowable = ScriptText(spans, self.fonts, size=style.fontSize, leading=style.leading,
                              color=style.textColor, lang=self.lang, direction=direction,
                              space_before=style.spaceBefore, space_after=style.spaceAfter)
        if flowable.missing:
            self.missing.setdefault(ref, set()).update(flowable.missing)
        return flowable

    def issues(self) -> list[Issue]:
        """One issue per item: where, and which code points (never the text: it may be health data)."""
        return [
            Issue("render", MISSING_GLYPH,
                  f"{ref}: no report font has a glyph for {', '.join(f'U+{cp:04X}' for cp in sorted(cps))}; "
                  "drawn as U+FFFD", ref)
            for ref, cps in sorted(self.missing.items())
        ]


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
            self.setFillColor(MUTED_TEXT)
            self.drawRightString(A4[0] - 18 * mm, 12 * mm, f"Page {self._pageNumber} of {total}")
            self.drawString(18 * mm, 12 * mm, "Confidential: for the named participant only")
            super().showPage()
        super().save()


# The frame's width for content: A4 less the 18 mm margins and the frame's 6 pt padding each side.
FRAME_WIDTH = A4[0] - 2 * 18 * mm - 12
# Column widths sum to 166 mm, inside the frame (169.8 mm); every cell is a flowable that wraps
# inside its column instead of running into the next one.
COLUMN_WIDTHS = [38 * mm, 18 * mm, 15 * mm, 16 * mm, 16 * mm, 16 * mm, 27 * mm, 20 * mm]
CELL_PADDING = 6  # reportlab's default on each side


def _cell(text: str, style: ParagraphStyle, column: int):
    """A number as a plain string when it fits its column (cheap); anything wider wraps in a Paragraph."""
    if pdfmetrics.stringWidth(text, style.fontName, style.fontSize) <= COLUMN_WIDTHS[column] - 2 * CELL_PADDING:
        return text
    return Paragraph(literal(text), style)


def _summary_table(report: AggregatedReport, styles, data: _Data) -> Table:
    rows = [[Paragraph(literal(label), styles["cell_head"]) for label in HEADER]]
    style = [
        ("FONT", (0, 0), (-1, -1), FONT, 8.5),  # not the default Helvetica: every font is embedded
        ("TEXTCOLOR", (0, 0), (-1, -1), TEXT),
        ("ALIGN", (2, 1), (-1, -1), "RIGHT"),
        ("BACKGROUND", (0, 0), (-1, 0), HEADER_BACKGROUND),
        ("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#b0b8c0")),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
    ]
    for n, row in enumerate(report.summary.itertuples(index=False), start=1):
        number = styles["cell_number"]
        out_of_range = int(row.out_of_range)
        rows.append([
            data.text(f"summary row {n} metric", metric_label(row.metric), styles["cell"]),
            data.text(f"summary row {n} unit", str(row.unit), styles["cell"]),
            *(_cell(text, number, col) for col, text in enumerate(
                (str(int(row.count)), format_value(row.mean), format_value(row.min), format_value(row.max),
                 format_change(row.change)), start=2)),
            _cell(str(out_of_range), styles["cell_alert"] if out_of_range else number, 7),
        ])
        if out_of_range:
            style.append(("TEXTCOLOR", (7, n), (7, n), ALERT_TEXT))
    table = Table(rows, repeatRows=1, colWidths=COLUMN_WIDTHS)
    table.setStyle(TableStyle(style))
    return table


def _chart_title(metric: str, unit: str, n: int, styles, data: _Data) -> ScriptText:
    spans = [Span(metric_label(metric), bold=True, isolate=True)]
    if unit:
        spans += [Span(" (", bold=True), Span(str(unit), bold=True, isolate=True), Span(")", bold=True)]
    spans.append(Span(", daily mean", bold=True))
    return data.text(f"summary row {n} chart title", spans, styles["chart_title"])


def _chart(report: AggregatedReport, metric: str, unit: str, ref_low, ref_high) -> Drawing:
    """Daily mean of one metric across the seven days of the week, with its reference range.

    The title is a flowable above the drawing (`_chart_title`): a drawing's String has one font.
    """
    days = report.week.days
    points = [
        (days.index(row.day), float(row.mean))
        for row in report.daily[report.daily["metric"] == metric].itertuples(index=False)
        if row.day in days
    ]
    width, height = 170 * mm, 48 * mm - 12
    drawing = Drawing(width, height)
    drawing.initialFontName, drawing.initialFontSize = FONT, 7  # not Helvetica: every font is embedded
    plot = LinePlot()
    plot.x, plot.y, plot.width, plot.height = 30, 18, width - 50, height - 26
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
        axis.labels.fontName, axis.labels.fontSize, axis.labels.fillColor = FONT, 7, TEXT
    drawing.add(plot)
    for bound in (ref_low, ref_high):
        if bound is not None and not math.isnan(bound) and plot.yValueAxis.valueMin <= bound <= plot.yValueAxis.valueMax:
            y = plot.y + (bound - plot.yValueAxis.valueMin) / (plot.yValueAxis.valueMax - plot.yValueAxis.valueMin) * plot.height
            drawing.add(Line(plot.x, y, plot.x + plot.width, y, strokeColor=colors.HexColor("#c77700"),
                             strokeDashArray=[3, 2], strokeWidth=0.6))
    if not points:
        drawing.add(String(plot.x + 10, plot.y + plot.height / 2, "no entries", fontName=FONT, fontSize=8,
                           fillColor=TEXT))
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
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("FONT", (0, 0), (-1, -1), FONT, 8)]))
    return table


def render_report(report: AggregatedReport) -> tuple[bytes, int]:
    """Render the PDF; returns (bytes, page count). Same input, same bytes.

    Characters no font has are drawn as U+FFFD; `render_report_checked` also says which.
    """
    pdf, pages, _ = render_report_checked(report)
    return pdf, pages


def render_report_checked(report: AggregatedReport, *, lang: str = "en",
                          font_files: Sequence[str] = ()) -> tuple[bytes, int, list[Issue]]:
    """Render the PDF; returns (bytes, page count, issues). Same input, same bytes.

    `issues` holds one `missing_glyph` Issue (stage 'render') per item with characters that no
    report font has, e.g. an emoji: the ref names the item (the diary note's file id,
    'trial_name', 'summary row 2 unit'), the message the code points, never the text.
    `lang` is the document language (PDF /Lang, and the language text is shaped for);
    `font_files` are font files tried before the built-in fallback chain ('file.ttc#N' for face N).
    """
    fonts = _fonts(tuple(font_files))
    data = _Data(fonts, lang)
    styles = _styles()
    week = report.week
    title = f"Weekly report: {report.trial_name}"
    story = [
        data.text("trial_name", [Span("Weekly report: ", bold=True), Span(report.trial_name, bold=True, isolate=True)],
                  styles["title"]),
        data.text("participant_id", [Span("Participant "), Span(report.participant_id, bold=True, isolate=True),
                                     Span(f"\nWeek of {week.label()}")], styles["subtitle"]),
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
            story += [_summary_table(report, styles, data), Paragraph("Charts", styles["h2"])]
            for n, row in enumerate(report.summary.itertuples(index=False), start=1):
                story += [KeepTogether([_chart_title(row.metric, row.unit, n, styles, data),
                                        _chart(report, row.metric, row.unit, row.ref_low, row.ref_high)]),
                          Spacer(1, 3 * mm)]
        if report.thumbnails:
            story.append(KeepTogether([Paragraph("Photos", styles["h2"]), _photos(report, styles)]))
        if report.excerpts:
            for i, excerpt in enumerate(report.excerpts):
                block = [
                    Paragraph(f"{local_date(excerpt.recorded_at, report.timezone):%A %d %B}", styles["small"]),
                    data.text(excerpt.file_id, excerpt.text, styles["body"]),
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
        title=title,
        author="Clinical trial reporting",
        lang=lang,
        displayDocTitle=True,  # viewers show the title, not the file name, in the window title
        initialFontName=FONT,  # else every page declares Helvetica, a font that is not embedded
        invariant=1,  # fixed creation date and document id: a rerun yields identical bytes
    )
    doc.build(story, canvasmaker=_NumberedCanvas)
    return out.getvalue(), doc.page, data.issues()

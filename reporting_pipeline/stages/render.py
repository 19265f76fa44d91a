"""Render stage: one subscriber's aggregated week as a PDF (reportlab), deterministic byte for byte.

Text the report itself writes (headings, labels, dates, numbers) is in the report's language
(`i18n`: gettext catalogs, Babel formats). Where the primary font has every character of it
(English, German, French, Spanish) it is set with ReportLab's Paragraph, the cheapest way; otherwise
(Japanese) with `scripttext.ScriptText`, like text that comes from data (trial name, participant id,
metric names and units, diary entries, a definition's approved texts), which may be in any script:
ScriptText falls back across fonts, shapes and reorders it; a character no font has is drawn as
U+FFFD and reported as a `missing_glyph` issue by `render_report_checked`.

What a trial's report shows (metrics, labels, decimals, sections, intro and contact texts, logo)
comes from its report definition (`definitions`), or the built-in layout when it has none.
"""

from __future__ import annotations

import io
import math
from collections import namedtuple
from functools import lru_cache, partial
from typing import Sequence
from xml.sax.saxutils import escape

from reportlab import rl_config

# Attribute validation of chart shapes is a development aid that costs a sixth of the render time; the tests
# render every layout, so a wrong attribute is caught there (reportlab documents the switch). Set before
# reportlab.graphics is imported: its shape classes define their checking __setattr__ when they are created.
rl_config.shapeChecking = 0

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
from .chartdraw import Unsupported, paint
from .definitions import SECTIONS, ReportDefinition
from .fonts import FontSet, load_fonts
from .i18n import N_, Language, language
from .scripttext import ScriptText, Span

# The report's own words use the primary font of the chain (Noto Sans, else DejaVu Sans,
# else Vera), registered with ReportLab under these names on first use, once per process.
FONT, FONT_BOLD = "ReportSans", "ReportSans-Bold"

# Text colours, all at least WCAG AA (4.5:1) on white and on the table header's background.
TEXT = colors.black
MUTED_TEXT = colors.HexColor("#595959")  # 7:1 on white; reportlab's grey (#808080) is only 3.9:1
ALERT_TEXT = colors.HexColor("#b3261e")
HEADER_BACKGROUND = colors.HexColor("#e8eef5")
PAGE_BACKGROUND = colors.white

MISSING_GLYPH = "missing_glyph"
# Messages are English msgids, looked up in the report's language when drawn.
NO_DATA_TEXT = N_("No measurements, notes or photos were recorded for this week.")
HEADER = [N_("Metric"), N_("Unit"), N_("Entries"), N_("Mean"), N_("Min"), N_("Max"), N_("Change vs last week"),
          N_("Outside range")]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_value(value, lang: Language | None = None, decimals: int = 1) -> str:
    """Numbers as the report prints them: `decimals` places in the report's locale; a dash when there is none."""
    if _missing(value):
        return "-"
    return (lang or language()).number(value, decimals)


def metric_label(metric: str) -> str:
    """'systolic_bp' -> 'Systolic bp': readable without a lookup table that would go stale."""
    text = metric.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def format_change(value, lang: Language | None = None, decimals: int = 1) -> str:
    lang = lang or language()
    if _missing(value):
        return lang._("no data last week")
    return lang.signed(value, decimals)


def template_spans(template: str, bold: bool = False, **values: str) -> list[Span]:
    """A translated message with {placeholders} as spans: the words as they are, each value (data:
    a trial name, an id) isolated, so a right-to-left name cannot reorder the words around it."""
    spans, rest = [], template
    while "{" in rest:
        before, _, after = rest.partition("{")
        name, _, rest = after.partition("}")
        if before:
            spans.append(Span(before, bold=bold))
        if values.get(name):
            spans.append(Span(values[name], bold=bold, isolate=True))
    if rest:
        spans.append(Span(rest, bold=bold))
    return spans


def literal(text: str) -> str:
    """Paragraph markup for text that must print exactly as written (no tags, no entities)."""
    return escape(text).replace("\n", "<br/>")


# What ReportLab can draw in FONT and FONT_BOLD (regular, bold): the fonts registered first, once per process.
_DRAWABLE: list[tuple[frozenset[int], frozenset[int]]] = []


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
        _DRAWABLE.append((regular.cmap, bold.cmap))
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
    """Builds flowables for the report's own words and for text from data, and collects what could not be drawn."""

    def __init__(self, fonts: FontSet, lang: str | Language):
        self.language = lang if isinstance(lang, Language) else language(lang)
        self.fonts, self.lang = fonts, self.language.tag
        self.cmaps = _DRAWABLE[0] if _DRAWABLE else (frozenset(), frozenset())
        self.missing: dict[str, set[int]] = {}
        self._rows: dict[int, tuple] = {}

    def rows(self, frame) -> list:
        """A table of the report (summary, daily means) as rows, converted once for all that read it."""
        cached = self._rows.get(id(frame))
        if cached is None or cached[0] is not frame:
            cached = self._rows[id(frame)] = (frame, _rows(frame))
        return cached[1]

    def drawable(self, text: str, bold: bool = False) -> bool:
        """True when ReportLab's primary font has every character (Paragraph, stringWidth, drawString work)."""
        return set(map(ord, text)) <= self.cmaps[bold]

    def words(self, text: str, style: ParagraphStyle, ref: str = "report text"):
        """The report's own words: a Paragraph when the primary font has them all, else ScriptText."""
        if self.drawable(text, style.fontName == FONT_BOLD):
            return Paragraph(literal(text), style)
        return self.text(ref, [Span(text, bold=style.fontName == FONT_BOLD)], style)

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

    def __init__(self, *args, data: _Data | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._pages = []
        self._data = data or _Data(_fonts(), "en")

    def showPage(self):
        self._pages.append(dict(self.__dict__))
        self._startPage()

    def save(self):
        total = len(self._pages)
        lang = self._data.language
        confidential = lang._("Confidential: for the named participant only")
        for state in self._pages:
            self.__dict__.update(state)
            self.setFont(FONT, 8)
            self.setFillColor(MUTED_TEXT)
            page = lang._("Page {page} of {total}", page=lang.integer(self._pageNumber), total=lang.integer(total))
            self._footer(page, A4[0] - 18 * mm, "right")
            self._footer(confidential, 18 * mm, "left")
            super().showPage()
        super().save()

    def _footer(self, text: str, x: float, align: str) -> None:
        if self._data.drawable(text):
            (self.drawRightString if align == "right" else self.drawString)(x, 12 * mm, text)
            return
        # Words the primary font lacks (Japanese): shaped with the fallback fonts, at the same baseline.
        width = 85 * mm
        line = ScriptText([Span(text)], self._data.fonts, size=8, leading=10, color=MUTED_TEXT, align=align,
                          lang=self._data.lang)
        line.wrap(width, 20)
        line.drawOn(self, x - width if align == "right" else x, 12 * mm - 0.25 * 10 - (line.height - 10))


# The frame's width for content: A4 less the 18 mm margins and the frame's 6 pt padding each side.
FRAME_WIDTH = A4[0] - 2 * 18 * mm - 12
# Column widths sum to 166 mm, inside the frame (169.8 mm); every cell is a flowable that wraps
# inside its column instead of running into the next one.
# Every word of every catalog's headings fits its column (test_i18n checks): no heading breaks mid-word.
COLUMN_WIDTHS = [32 * mm, 18 * mm, 16 * mm, 18 * mm, 15 * mm, 15 * mm, 27 * mm, 25 * mm]
CELL_PADDING = 6  # reportlab's default on each side


def _cell(text: str, style: ParagraphStyle, column: int, data: _Data | None = None):
    """A number as a plain string when it fits its column (cheap); anything wider wraps in a Paragraph
    (or ScriptText, for words the primary font lacks)."""
    if data is not None and not data.drawable(text):
        return data.words(text, style)
    if pdfmetrics.stringWidth(text, style.fontName, style.fontSize) <= COLUMN_WIDTHS[column] - 2 * CELL_PADDING:
        return text
    return Paragraph(literal(text), style)


def _metric_text(row, definition: ReportDefinition | None, lang: Language) -> tuple[str, str, int]:
    """(label, unit, decimals) of a summary row: the definition's, or the built-in ones."""
    spec = definition.metric(row.metric) if definition else None
    if spec is None:
        return metric_label(row.metric), str(row.unit), 1
    return spec.label(lang.code), spec.unit(lang.code) or str(row.unit), spec.decimals


@lru_cache(maxsize=32)
def _row_type(columns: tuple[str, ...]):
    return namedtuple("Row", columns, rename=True)


def _rows(frame) -> list:
    """A small frame's rows as namedtuples of Python values, like `itertuples(index=False)`, without the new
    namedtuple class `itertuples` makes on every call (with its filtering, 2.3 ms of a report's ~40)."""
    row = _row_type(tuple(frame.columns))
    return [row._make(values) for values in zip(*(frame[column].tolist() for column in frame.columns))]


def _summary_table(report: AggregatedReport, styles, data: _Data) -> Table:
    lang = data.language
    rows = [[data.words(lang._(label), styles["cell_head"]) for label in HEADER]]
    style = [
        ("FONT", (0, 0), (-1, -1), FONT, 8.5),  # not the default Helvetica: every font is embedded
        ("TEXTCOLOR", (0, 0), (-1, -1), TEXT),
        ("ALIGN", (2, 1), (-1, -1), "RIGHT"),
        ("BACKGROUND", (0, 0), (-1, 0), HEADER_BACKGROUND),
        ("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#b0b8c0")),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
    ]
    for n, row in enumerate(data.rows(report.summary), start=1):
        number = styles["cell_number"]
        out_of_range = int(row.out_of_range)
        label, unit, decimals = _metric_text(row, report.definition, lang)
        rows.append([
            data.text(f"summary row {n} metric", label, styles["cell"]),
            data.text(f"summary row {n} unit", unit, styles["cell"]),
            *(_cell(text, number, col, data) for col, text in enumerate(
                (lang.integer(int(row.count)), format_value(row.mean, lang, decimals),
                 format_value(row.min, lang, decimals), format_value(row.max, lang, decimals),
                 format_change(row.change, lang, decimals)), start=2)),
            _cell(lang.integer(out_of_range), styles["cell_alert"] if out_of_range else number, 7, data),
        ])
        if out_of_range:
            style.append(("TEXTCOLOR", (7, n), (7, n), ALERT_TEXT))
    table = Table(rows, repeatRows=1, colWidths=COLUMN_WIDTHS)
    table.setStyle(TableStyle(style))
    return table


def _chart_title(label: str, unit: str, n: int, styles, data: _Data) -> ScriptText:
    lang = data.language
    template = lang._("{metric} ({unit}), daily mean") if unit else lang._("{metric}, daily mean")
    spans = template_spans(template, bold=True, metric=label, unit=str(unit))
    return data.text(f"summary row {n} chart title", spans, styles["chart_title"])


# Text laid over a chart in ScriptText: made once, a ParagraphStyle checks every attribute it is given.
_AXIS_STYLE = ParagraphStyle("axis", fontName=FONT, fontSize=7, leading=9, textColor=TEXT)
_EMPTY_STYLE = ParagraphStyle("empty", fontName=FONT, fontSize=8, leading=10, textColor=TEXT)


class _Chart(Drawing):
    """A drawing with text laid over it: axis labels in words the primary font lacks (Japanese weekdays)
    are ScriptText, which a drawing's String (one font) cannot hold."""

    def __init__(self, width, height, overlays=()):
        super().__init__(width, height)
        self.overlays = list(overlays)  # (ScriptText, x, y) with (x, y) the box's bottom left

    def draw(self, showBoundary=None):
        try:
            paint(self, self.canv)  # the same page as renderPDF's, in two thirds of the time
        except Unsupported:
            super().draw()

    def drawOn(self, canvas, x, y, _sW=0):
        super().drawOn(canvas, x, y, _sW)
        for text, ox, oy in self.overlays:
            text.drawOn(canvas, x + ox, y + oy)


def _tick_label(lang: Language):
    """Axis numbers in the report's locale (decimal comma in de/fr/es), only as many decimals as needed."""
    def label(value: float) -> str:
        decimals = next((d for d in range(3) if abs(value * 10 ** d - round(value * 10 ** d)) < 1e-6), 2)
        return lang.plain_number(value, decimals)
    return label


def _chart(report: AggregatedReport, metric: str, unit: str, ref_low, ref_high, data: _Data | None = None) -> Drawing:
    """Daily mean of one metric across the seven days of the week, with its reference range.

    The title is a flowable above the drawing (`_chart_title`): a drawing's String has one font.
    """
    data = data or _Data(_fonts(), report.language)
    lang = data.language
    days = report.week.days
    points = [(days.index(row.day), float(row.mean))
              for row in data.rows(report.daily) if row.metric == metric and row.day in days]
    width, height = 170 * mm, 48 * mm - 12
    drawing = _Chart(width, height)
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
    day_labels = [lang.day_short(day) for day in days]
    if all(data.drawable(label) for label in day_labels):
        plot.xValueAxis.labelTextFormat = lambda i: day_labels[int(round(i))] if 0 <= round(i) < 7 else ""
    else:
        plot.xValueAxis.labelTextFormat = lambda i: ""
        span = plot.xValueAxis.valueMax - plot.xValueAxis.valueMin
        for i, label in enumerate(day_labels):
            text = data.text(f"chart day {i + 1}", label, _AXIS_STYLE)
            text.align = "center"
            text.wrap(60, 20)
            center = plot.x + (i - plot.xValueAxis.valueMin) / span * plot.width
            drawing.overlays.append((text, center - 30, plot.y - 5 - text.height))
    plot.yValueAxis.labelTextFormat = _tick_label(lang)
    for axis in (plot.xValueAxis, plot.yValueAxis):
        axis.labels.fontName, axis.labels.fontSize, axis.labels.fillColor = FONT, 7, TEXT
    drawing.add(plot)
    for bound in (ref_low, ref_high):
        if bound is not None and not math.isnan(bound) and plot.yValueAxis.valueMin <= bound <= plot.yValueAxis.valueMax:
            y = plot.y + (bound - plot.yValueAxis.valueMin) / (plot.yValueAxis.valueMax - plot.yValueAxis.valueMin) * plot.height
            drawing.add(Line(plot.x, y, plot.x + plot.width, y, strokeColor=colors.HexColor("#c77700"),
                             strokeDashArray=[3, 2], strokeWidth=0.6))
    if not points:
        empty = lang._("no entries")
        if data.drawable(empty):
            drawing.add(String(plot.x + 10, plot.y + plot.height / 2, empty, fontName=FONT, fontSize=8,
                               fillColor=TEXT))
        else:
            text = data.text("chart no entries", empty, _EMPTY_STYLE)
            text.wrap(200, 20)
            drawing.overlays.append((text, plot.x + 10, plot.y + plot.height / 2 - 2.5))
    return drawing


def _photos(report: AggregatedReport, styles, data: _Data | None = None) -> Table:
    data = data or _Data(_fonts(), report.language)
    cells = []
    for thumb in report.thumbnails:
        scale = min(52 * mm / thumb.width, 52 * mm / thumb.height)
        image = Image(io.BytesIO(thumb.jpeg), width=thumb.width * scale, height=thumb.height * scale)
        caption = data.words(data.language.date_short(local_date(thumb.recorded_at, report.timezone)), styles["small"])
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


def render_report_checked(report: AggregatedReport, *, lang: str | None = None,
                          font_files: Sequence[str] = ()) -> tuple[bytes, int, list[Issue]]:
    """Render the PDF; returns (bytes, page count, issues). Same input, same bytes.

    `issues` holds one `missing_glyph` Issue (stage 'render') per item with characters that no
    report font has, e.g. an emoji: the ref names the item (the diary note's file id,
    'trial_name', 'summary row 2 unit'), the message the code points, never the text.
    `lang` is the report's language (its words and formats, PDF /Lang, the language text is shaped
    for); by default the one the report was aggregated for (`report.language`).
    `font_files` are font files tried before the built-in fallback chain ('file.ttc#N' for face N).
    """
    fonts = _fonts(tuple(font_files))
    data = _Data(fonts, lang or report.language)
    words = data.language
    styles = _styles()
    definition = report.definition
    week = report.week
    title = words._("Weekly report: {trial}", trial=report.trial_name)
    story = []
    if report.logo is not None:
        scale = min(60 * mm / report.logo.width, 14 * mm / report.logo.height)
        story += [Image(io.BytesIO(report.logo.png), width=report.logo.width * scale,
                        height=report.logo.height * scale, hAlign="LEFT"), Spacer(1, 3 * mm)]
    week_line = words._("Week of {week}", week=words.week_range(week.monday, week.sunday))
    story += [
        data.text("trial_name", template_spans(words._("Weekly report: {trial}"), bold=True, trial=report.trial_name),
                  styles["title"]),
        data.text("participant_id", template_spans(words._("Participant {participant}"),
                                                   participant=report.participant_id)
                  + [Span(f"\n{week_line}")], styles["subtitle"]),
    ]
    if definition and definition.intro:
        story += [Spacer(1, 3 * mm), data.text("intro", definition.text(definition.intro, words.code), styles["body"])]
    story.append(Spacer(1, 6 * mm))
    if not report.has_data:
        story += [data.words(words._("Nothing recorded this week"), styles["h2"]),
                  data.words(words._(NO_DATA_TEXT), styles["body"])]
    else:
        for section in (definition.sections if definition else SECTIONS):
            story += _section(section, report, styles, data)
    if report.issues:
        story += [Spacer(1, 4 * mm), data.words(words.n_(
            "{n} item could not be included in this report; the study team has been notified.",
            "{n} items could not be included in this report; the study team has been notified.",
            len(report.issues)), styles["small"])]
    if definition and definition.contact:
        contact = definition.text(definition.contact, words.code)
        story += [Spacer(1, 4 * mm), KeepTogether([data.words(words._("Contact"), styles["h2"]),
                                                    data.text("contact", contact, styles["body"])])]
    out = io.BytesIO()
    doc = SimpleDocTemplate(
        out,
        pagesize=A4,
        leftMargin=18 * mm, rightMargin=18 * mm, topMargin=16 * mm, bottomMargin=20 * mm,
        title=title,
        # Which approved definition rendered it, for audits of the PDF alone (the `reports` record has it too).
        subject=(f"Report definition {definition.trial_id} version {definition.version}" if definition
                 else "Built-in report layout (no report definition)"),
        author="Clinical trial reporting",
        lang=data.lang,
        displayDocTitle=True,  # viewers show the title, not the file name, in the window title
        initialFontName=FONT,  # else every page declares Helvetica, a font that is not embedded
        invariant=1,  # fixed creation date and document id: a rerun yields identical bytes
    )
    doc.build(story, canvasmaker=partial(_NumberedCanvas, data=data))
    return out.getvalue(), doc.page, data.issues()


def _section(section: str, report: AggregatedReport, styles, data: _Data) -> list:
    """The flowables of one section (summary, charts, photos, diary); none when it has nothing to show."""
    words = data.language
    if section == "summary":
        return [
            data.words(words._("Summary"), styles["h2"]),
            data.words(words._("Days with entries: {days} of {total}. Measurements this week: {count}.",
                               days=words.integer(report.adherence_days), total=words.integer(7),
                               count=words.integer(report.record_count)), styles["body"]),
            Spacer(1, 3 * mm),
            *([_summary_table(report, styles, data)] if not report.summary.empty else []),
        ]
    if section == "charts":
        if report.summary.empty:
            return []
        out = [data.words(words._("Charts"), styles["h2"])]
        for n, row in enumerate(data.rows(report.summary), start=1):
            label, unit, _ = _metric_text(row, report.definition, words)
            out += [KeepTogether([_chart_title(label, unit, n, styles, data),
                                  _chart(report, row.metric, unit, row.ref_low, row.ref_high, data)]),
                    Spacer(1, 3 * mm)]
        return out
    if section == "photos":
        if not report.thumbnails:
            return []
        return [KeepTogether([data.words(words._("Photos"), styles["h2"]), _photos(report, styles, data)])]
    if section == "diary":
        out = []
        for i, excerpt in enumerate(report.excerpts):
            block = [
                data.words(words.date_long(local_date(excerpt.recorded_at, report.timezone)), styles["small"]),
                data.text(excerpt.file_id, excerpt.text, styles["body"]),
                Spacer(1, 2 * mm),
            ]
            # The heading stays with the first entry instead of ending a page alone.
            out.append(KeepTogether(([data.words(words._("Diary"), styles["h2"])] if i == 0 else []) + block))
        return out
    raise ValueError(f"unknown report section {section!r}")

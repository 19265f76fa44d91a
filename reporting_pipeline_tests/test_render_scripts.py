"""Reports in every script: real glyphs, text read back in logical order, fonts embedded and subset,
no .notdef drawn, missing glyphs reported, PDF title/language, contrast and cells that wrap.

Text extraction is checked with two readers that work differently: poppler's pdftotext (goes by
glyph positions, honours ActualText) and pypdf (goes by content order and ToUnicode).
"""

from __future__ import annotations

import io
import re
import subprocess
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from pypdf import PdfReader
from pypdf.generic import ContentStream

from reporting_pipeline.stages import render
from reporting_pipeline.stages.aggregate import aggregate_subscriber
from reporting_pipeline.stages.fetch import FileItem
from reporting_pipeline.stages.fonts import PREPROCESS_AFTER_SUBSETS, _pip_font_dirs, load_fonts
from reporting_pipeline.stages.render import render_report, render_report_checked

from .conftest import needs_poppler, pdf_text
from .test_aggregate import rec
from .test_render import bundle

NOTO = {"NotoSans-Regular.ttf#0", "NotoSansHebrew-Regular.ttf#0", "NotoNaskhArabic-Regular.ttf#0",
        "NotoSansDevanagari-Regular.ttf#0", "NotoSansThai-Regular.ttf#0", "NotoSansCJK-Regular.ttc#0"}
needs_noto = pytest.mark.skipif(
    not NOTO <= set(load_fonts().describe()),
    reason="Debian's fonts-noto-core and fonts-noto-cjk are not installed (.ci/install-fonts.sh installs them)")

DIARY_EXCERPT = "Zażółć gęślą jaźń. Привет, доктор. Καλημέρα. 今日は頭痛がした。 مرحبا"
SAMPLES = {
    "latin": "Zażółć gęślą jaźń. Ça va: ñandú, Øresund, İstanbul, Šťastný, Þórður, cœur",
    "greek": "Καλημέρα, γιατρέ. Πονάει το κεφάλι μου.",
    "cyrillic": "Привет, доктор. Голова болит, ёж.",
    "hebrew": "שלום, אני מרגיש טוב היום.",
    "arabic": "مرحبا، أشعر بتحسن اليوم. لا بأس",
    "chinese": "我今天头疼，睡得不好。",
    "japanese": "今日は頭痛がした。カタカナ",
    "korean": "오늘 두통이 있었다",
    "devanagari": "आज मुझे सिरदर्द हुआ। क्षमा कीजिए, स्त्री",
    "thai": "วันนี้ฉันปวดหัว ดื่มน้ำ",
    "mixed": DIARY_EXCERPT,
}
RTL = {"hebrew", "arabic"}
MICROBE = "\U0001F9A0"  # an emoji none of the report fonts has


def note(text: str, file_id: str = "n1", hour: int = 21) -> FileItem:
    return FileItem(file_id, "text", datetime(2026, 11, 17, hour, tzinfo=UTC), "text/plain", text.encode())


def pdftotext(pdf: bytes, tmp_path, *args: str) -> str:
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    out = subprocess.run(["pdftotext", "-enc", "UTF-8", *args, str(path), "-"], check=True,
                         capture_output=True, text=True).stdout
    return out


def folded(text: str) -> str:
    """Whitespace folded, and the bidi embedding marks poppler puts around right-to-left runs dropped."""
    return " ".join(re.sub("[\u200e\u200f\u202a-\u202e]", "", text).split())


def pdffonts(pdf: bytes, tmp_path) -> list[dict]:
    path = tmp_path / "fonts.pdf"
    path.write_bytes(pdf)
    lines = subprocess.run(["pdffonts", str(path)], check=True, capture_output=True, text=True).stdout.splitlines()
    rows = []
    for line in lines[2:]:
        emb, sub, uni = line.split()[-5:-2]
        rows.append({"name": line.split()[0], "emb": emb, "sub": sub, "uni": uni})
    return rows


def _code_to_gid(font) -> tuple[int, callable]:
    """(bytes per code, code -> glyph id in the embedded font program) for a font resource."""
    from fontTools.cffLib import CFFFontSet
    from fontTools.ttLib import TTFont

    if font["/Subtype"] == "/Type0":
        cid_font = font["/DescendantFonts"][0].get_object()
        descriptor = cid_font["/FontDescriptor"].get_object()
        if cid_font["/Subtype"] == "/CIDFontType0":
            cff = CFFFontSet()
            cff.decompile(io.BytesIO(descriptor["/FontFile3"].get_object().get_data()), None)
            charset = cff[cff.fontNames[0]].charset
            gids = {int(name[3:]): gid for gid, name in enumerate(charset) if name.startswith("cid")}
            return 2, lambda code: gids.get(code, 0)
        cid_map = cid_font.get("/CIDToGIDMap", "/Identity")
        if cid_map == "/Identity":
            return 2, lambda code: code
        data = cid_map.get_object().get_data()
        return 2, lambda code: int.from_bytes(data[2 * code:2 * code + 2], "big") if 2 * code < len(data) else 0
    # ReportLab's simple TrueType subsets: one byte per code, the subset's own cmap.
    program = TTFont(io.BytesIO(font["/FontDescriptor"].get_object()["/FontFile2"].get_object().get_data()))
    cmap = next(t for t in program["cmap"].tables).cmap
    return 1, lambda code: program.getGlyphID(cmap[code]) if code in cmap else 0


def shown_glyphs(pdf: bytes) -> tuple[dict[str, list[int]], list[tuple[float, ...]]]:
    """Glyph ids drawn per font (BaseFont), and the fill colour in effect for every text shown."""
    reader = PdfReader(io.BytesIO(pdf))
    glyphs: dict[str, list[int]] = defaultdict(list)
    text_colours = []
    for page in reader.pages:
        resources = page["/Resources"]["/Font"]
        decoders = {name: (resources[name].get_object()["/BaseFont"], *_code_to_gid(resources[name].get_object()))
                    for name in resources}
        current, colour = None, (0.0, 0.0, 0.0)
        for operands, op in ContentStream(page.get_contents(), reader).operations:
            if op == b"Tf":
                current = operands[0]
            elif op == b"rg":
                colour = tuple(float(v) for v in operands)
            elif op == b"g":
                colour = (float(operands[0]),) * 3
            elif op in (b"Tj", b"TJ", b"'", b'"'):
                items = operands[0] if op == b"TJ" else [operands[-1]]
                base, width, to_gid = decoders[current]
                for item in items:
                    if isinstance(item, (int, float)) or not hasattr(item, "__len__"):
                        continue
                    raw = bytes(getattr(item, "original_bytes", item))
                    glyphs[base] += [to_gid(int.from_bytes(raw[i:i + width], "big")) for i in range(0, len(raw), width)]
                    text_colours.append(colour)
    return glyphs, text_colours


def contrast(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """WCAG 2 contrast ratio of two sRGB colours (components 0..1)."""

    def luminance(rgb):
        lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def multi_script_report():
    # A report shows at most six diary notes.
    texts = [SAMPLES[s] for s in ("mixed", "hebrew", "arabic", "devanagari", "thai", "korean")]
    files = [note(text, f"n{i}", 8 + i) for i, text in enumerate(texts)]
    records = [
        rec(16, 8, "давление", 120.0, 90, 140, unit="мм рт. ст."),
        rec(17, 8, "血圧", 125.0, 90, 140),
        rec(18, 8, "ضغط_الدم", 130.0, 90, 140, unit="ملم زئبق"),
        rec(18, 9, "रक्तचाप", 128.0, 90, 140),
    ]
    return aggregate_subscriber(bundle(trial_name="Étude cœur – Kraków/Москва", files=files, records=records), "UTC")


@needs_noto
@needs_poppler
@pytest.mark.parametrize("script", SAMPLES)
def test_each_script_reads_back_in_logical_order(script, tmp_path):
    sample = SAMPLES[script]
    pdf, _, issues = render_report_checked(aggregate_subscriber(bundle(files=[note(sample)]), "UTC"))
    assert issues == []
    assert sample in pdf_text(pdf)  # pypdf: content order and ToUnicode
    poppler = folded(pdftotext(pdf, tmp_path))
    if script in RTL:
        # poppler orders a right-to-left paragraph's runs left to right on a left-to-right page,
        # breaking them at punctuation: each run between punctuation must still read logically.
        for part in re.split("[.,،]", sample):
            assert part.strip() in poppler
    else:
        assert sample in poppler


@needs_noto
@needs_poppler
def test_trial_name_and_metric_labels_in_other_scripts(tmp_path):
    pdf, pages, issues = render_report_checked(multi_script_report())
    assert issues == []
    poppler, pypdf = folded(pdftotext(pdf, tmp_path)), pdf_text(pdf)
    for text in ("Weekly report: Étude cœur – Kraków/Москва", "Давление", "мм рт. ст.", "血圧", "ضغط الدم",
                 "ملم زئبق", "रक्तचाप", "Давление (мм рт. ст.), daily mean", DIARY_EXCERPT):
        assert text in poppler
        assert text in pypdf
    assert PdfReader(io.BytesIO(pdf)).metadata.title == "Weekly report: Étude cœur – Kraków/Москва"


@needs_noto
@needs_poppler
def test_fonts_are_embedded_subset_and_mapped_to_unicode(tmp_path):
    rows = pdffonts(render_report(multi_script_report())[0], tmp_path)
    assert {r["name"].split("+")[-1] for r in rows} >= {
        "NotoSans-Regular", "NotoSans-Bold", "NotoSansHebrew-Regular", "NotoNaskhArabic-Regular",
        "NotoSansDevanagari-Regular", "NotoSansThai-Regular", "NotoSansCJKjp-Regular", "NotoSansCJKjp-Bold"}
    for row in rows:
        assert (row["emb"], row["sub"], row["uni"]) == ("yes", "yes", "yes"), row


@needs_noto
def test_no_glyph_drawn_is_notdef():
    report = multi_script_report()
    report.excerpts[0].text += " " + MICROBE  # the replacement glyph is a real glyph too
    glyphs, _ = shown_glyphs(render_report(report)[0])
    assert len(glyphs) >= 8
    for font, gids in glyphs.items():
        assert gids and 0 not in gids, font


@needs_noto
def test_multi_script_rendering_is_deterministic():
    assert render_report(multi_script_report())[0] == render_report(multi_script_report())[0]


@needs_noto
def test_a_process_that_has_rendered_many_reports_embeds_the_same_fonts(monkeypatch):
    # After PREPROCESS_AFTER_SUBSETS subsets of a font (a worker deep into a large shard) its subsets are cut from
    # HarfBuzz's preprocessed face: the reports must stay byte for byte what a fresh process renders. Not
    # the CJK faces': preprocessed, they would hold 180 MiB more in every worker.
    report = multi_script_report()
    chain = {*load_fonts().regular, *load_fonts().bold}
    for font in chain:  # as in a fresh process, whatever this one rendered before (restored afterwards)
        monkeypatch.setattr(font, "_subsets", 0)
        monkeypatch.setattr(font, "_subset_face", font.face)
    fresh = render_report(report)[0]
    assert not any(font._subset_face is not font.face for font in chain)
    for font in chain:
        font._subsets = PREPROCESS_AFTER_SUBSETS - 1
    assert render_report(report)[0] == fresh
    preprocessed = {font.ps_name for font in chain if font._subset_face is not font.face}
    assert {"NotoSans-Regular", "NotoSans-Bold", "NotoSansHebrew-Regular", "NotoNaskhArabic-Regular"} <= preprocessed
    assert not {"NotoSansCJKjp-Regular", "NotoSansCJKjp-Bold"} & preprocessed


@needs_poppler
def test_a_character_no_font_has_is_drawn_as_a_replacement_and_reported(tmp_path):
    assert not any(font.has(ord(MICROBE)) for font in load_fonts().regular)
    report = aggregate_subscriber(bundle(files=[note(f"Felt sick {MICROBE} today", "n7")]), "UTC")
    pdf, pages, issues = render_report_checked(report)
    assert [(i.stage, i.code, i.ref) for i in issues] == [("render", "missing_glyph", "n7")]
    assert "U+1F9A0" in issues[0].message and "n7" in issues[0].message
    assert "sick" not in issues[0].message and MICROBE not in issues[0].message  # no health data in issues
    assert "Felt sick \ufffd today" in folded(pdftotext(pdf, tmp_path))
    assert "Felt sick \ufffd today" in pdf_text(pdf)
    assert render_report(report) == (pdf, pages)  # the old API draws the same and stays a pair


def test_missing_glyphs_in_the_trial_name_and_units_name_those_items():
    report = aggregate_subscriber(bundle(trial_name=f"Trial {MICROBE}",
                                         records=[rec(16, 8, "weight", 80.0, unit=f"kg{MICROBE}")]), "UTC")
    issues = render_report_checked(report)[2]
    assert [i.ref for i in issues] == ["summary row 1 chart title", "summary row 1 unit", "trial_name"]
    assert all(i.code == "missing_glyph" and "U+1F9A0" in i.message for i in issues)


def test_document_language_title_and_window_title():
    report = aggregate_subscriber(bundle(trial_name="Étude cœur – Kraków/Москва"), "UTC")
    # The title is in the report's language, like its text.
    for lang, title in (("en", "Weekly report"), ("de", "Wochenbericht")):
        reader = PdfReader(io.BytesIO(render_report_checked(report, lang=lang)[0]))
        root = reader.trailer["/Root"]
        assert root["/Lang"] == lang
        assert root["/ViewerPreferences"]["/DisplayDocTitle"] == True  # noqa: E712 (a pypdf BooleanObject)
        assert reader.metadata.title == f"{title}: Étude cœur – Kraków/Москва"


def test_text_colours_meet_wcag_aa():
    white = (1.0, 1.0, 1.0)
    backgrounds = [render.PAGE_BACKGROUND.rgb(), render.HEADER_BACKGROUND.rgb()]
    for colour in (render.TEXT, render.MUTED_TEXT, render.ALERT_TEXT):
        for background in backgrounds:
            assert contrast(colour.rgb(), background) >= 4.5, (colour, background)
    # Every colour text is actually drawn in, also on the header background.
    _, colours = shown_glyphs(render_report(aggregate_subscriber(bundle(), "UTC"))[0])
    assert colours
    for colour in set(colours):
        assert contrast(colour, white) >= 4.5 and contrast(colour, backgrounds[1]) >= 4.5, colour


def test_summary_cells_wrap_inside_columns_that_fit_the_frame():
    from reportlab.platypus import Flowable

    report = aggregate_subscriber(bundle(records=[rec(16, 8, "weight", 80.5, unit="milligrams per decilitre of blood")]),
                                  "UTC")
    fonts = render._fonts()
    styles = render._styles()
    table = render._summary_table(report, styles, render._Data(fonts, "en"))
    frame_width = render.A4[0] - 36 * render.mm - 12  # margins, and the frame's 6 pt padding each side
    assert render.FRAME_WIDTH == frame_width
    assert sum(render.COLUMN_WIDTHS) <= frame_width
    table.wrap(frame_width, 1000)
    cells = [[c[0] if isinstance(c, (list, tuple)) and len(c) == 1 else c for c in row] for row in table._cellvalues]
    for row in cells:
        for col, cell in enumerate(row):
            avail = render.COLUMN_WIDTHS[col] - 12  # 6 pt cell padding each side
            if isinstance(cell, str):  # a plain string only where it fits
                assert render.pdfmetrics.stringWidth(cell, render.FONT, 8.5) <= avail
                continue
            assert isinstance(cell, Flowable)
            cell.wrap(avail, 1000)
            lines = getattr(cell, "_lines", None)
            if lines is not None:  # ScriptText: every line within the cell
                for para, s, e in lines:
                    pieces = cell._line_pieces(para, s, e)
                    assert sum(g[2] for _, glyphs in pieces for g in glyphs) * cell.size / 1000 <= avail + 0.01
            else:  # Paragraph: no line wider than the cell (negative extra space would overflow)
                assert all(line[0] >= -1e-6 for line in cell.blPara.lines if isinstance(line, tuple))
    change = cells[1][6]
    change.wrap(render.COLUMN_WIDTHS[6] - 12, 1000)
    assert len(change.blPara.lines) == 2  # "no data last week" wraps instead of running on
    unit = cells[1][1]
    unit.wrap(render.COLUMN_WIDTHS[1] - 12, 1000)
    assert len(unit._lines) > 1


@needs_poppler
def test_long_cell_text_stays_left_of_the_next_column(tmp_path):
    report = aggregate_subscriber(bundle(records=[rec(16, 8, "weight", 80.5, unit="milligrams per decilitre of blood")]),
                                  "UTC")
    pdf = render_report(report)[0]
    words = re.findall(r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="[\d.]+">([^<]*)</word>',
                       pdftotext(pdf, tmp_path, "-f", "1", "-l", "1", "-bbox"))
    boxes = [(float(x0), float(y0), float(x1), w) for x0, y0, x1, w in words]
    header_y = next(y for x0, y, x1, w in boxes if w == "Entries")
    left_of = {w: x0 for x0, y, x1, w in boxes if abs(y - header_y) < 12}
    table_bottom = next(y for x0, y, x1, w in boxes if w == "Charts")
    body = [(x0, x1, w) for x0, y, x1, w in boxes if header_y + 15 < y < table_bottom]
    unit_words = [x1 for x0, x1, w in body if w in ("milligrams", "per", "decilitre", "of", "blood")]
    change_words = [x1 for x0, x1, w in body if w in ("no", "data", "last", "week")]
    assert unit_words and change_words
    assert max(unit_words) < left_of["Entries"] - 6  # the cell's padding is still between them
    assert max(change_words) < left_of["Outside"] - 6


def test_fonts_are_loaded_and_registered_once_per_process():
    assert load_fonts() is load_fonts()
    first = render._fonts()
    render_report(aggregate_subscriber(bundle(), "UTC"))
    assert render._fonts() is first
    from reportlab.pdfbase import pdfmetrics

    font = pdfmetrics.getFont(render.FONT)
    render_report(aggregate_subscriber(bundle(), "UTC"))
    assert pdfmetrics.getFont(render.FONT) is font


def test_pip_installed_fallback_covers_latin_greek_and_cyrillic():
    """Without Debian's fonts, matplotlib's DejaVu Sans (a dependency) still covers these scripts."""
    fonts = load_fonts(font_dirs=tuple(_pip_font_dirs()))
    assert fonts.regular[0].path.endswith("DejaVuSans.ttf") and fonts.bold[0].path.endswith("DejaVuSans-Bold.ttf")
    for text in (SAMPLES["latin"], SAMPLES["greek"], SAMPLES["cyrillic"]):
        assert all(fonts.first(ord(ch), False) is fonts.regular[0] for ch in text)


def test_font_files_given_come_first():
    dejavu = load_fonts(font_dirs=tuple(_pip_font_dirs())).regular[0].path
    fonts = load_fonts((dejavu,))
    assert fonts.regular[0].path == dejavu and fonts.bold[0].path == dejavu
    pdf, _, issues = render_report_checked(aggregate_subscriber(bundle(files=[note(SAMPLES["greek"])]), "UTC"),
                                           font_files=[dejavu])
    assert issues == [] and SAMPLES["greek"] in pdf_text(pdf)

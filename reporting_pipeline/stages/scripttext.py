"""A paragraph flowable for text in any script: font fallback, bidi, HarfBuzz shaping, line breaking.

ReportLab's Paragraph shapes a word with the font of its first fragment only, does no bidi when a
paragraph has more than one font, and cannot embed CFF fonts, so text from data (which may be in
any script) is laid out here and drawn with `fonts.GlyphFont`s.

How the text layer stays truthful (pdftotext and pypdf return the text as written):
- a code stands for a glyph and the text it reads back as, so within a cluster (a base with its
  marks, a conjunct, a vowel sign drawn before its consonant) the glyphs, shown in visual order,
  read back the cluster's characters in logical order; a glyph with no character of its own (the
  second part of a split vowel) reads back as nothing. CID-keyed CFF fonts (Noto CJK) cannot give
  a glyph two codes: a cluster that would need it gets an ActualText span instead;
- right-to-left runs are shown right to left, as readers expect of a PDF (both reorder them);
- a line's runs are shown in logical order, each at its place: a right-to-left sentence broken by
  punctuation from another font reads in order in readers that follow content order.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass

import uharfbuzz as hb
from bidi import algorithm as bidi_algorithm
from reportlab.lib import colors
from reportlab.lib.rl_accel import fp_str
from reportlab.platypus.flowables import Flowable

from .fonts import REPLACEMENT, FontSet, GlyphFont, is_default_ignorable


@dataclass(frozen=True)
class Span:
    """Text in one weight. `isolate`: data set into the report's own words (a trial name in a title),
    laid out in its own direction without reordering the words around it."""

    text: str
    bold: bool = False
    isolate: bool = False


@dataclass
class _Run:
    """Characters [start, end) of a paragraph in one font at one bidi level, shaped."""

    start: int
    end: int
    font: GlyphFont
    level: int
    # (glyph id, cluster start, x advance, x offset, y offset) in visual order, thousandths of an em
    glyphs: list[tuple[int, int, float, float, float]]


@dataclass
class _Para:
    text: str  # as drawn: as written, but tabs as spaces and U+FFFD for what no font has
    base_level: int
    runs: list[_Run]
    advance: list[float]  # per character, thousandths of an em (a cluster's width on its first character)
    cluster_starts: list[int]  # sorted
    cluster_ends: dict[int, int]  # cluster start -> end
    breaks: list[int]  # sorted positions where a line may start


# Line breaking in CJK text: between any two characters, except before closing punctuation and
# small kana, or after opening punctuation.
_NO_START = set("、。，．・：；？！）」』】〕〉》ー々ゝゞぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮヵヶ),.!?:;%]}")
_NO_END = set("（「『【〔〈《([{")


def _is_cjk(cp: int) -> bool:
    return (0x2E80 <= cp <= 0x9FFF or 0xAC00 <= cp <= 0xD7AF or 0xF900 <= cp <= 0xFAFF
            or 0xFF00 <= cp <= 0xFFEF or 0x20000 <= cp <= 0x3FFFF)


def bidi_levels(text: str, base: int | None = None) -> tuple[list[int], int]:
    """Resolved embedding level of each character (UAX #9 up to rule I2) and the paragraph's base
    level (from its first strong character unless `base` is given).

    python-bidi's pure-Python algorithm exposes the levels; its faster Rust wrapper only returns the
    reordered string. X9 drops embedding controls from its list: they take their neighbour's level.
    """
    if base is None:
        base = bidi_algorithm.get_base_level(text)
    if base == 0 and not _RTL.search(text):
        return [0] * len(text), 0  # the common case: nothing right to left
    storage = bidi_algorithm.get_empty_storage()
    storage["base_level"], storage["base_dir"] = base, ("L", "R")[base]
    bidi_algorithm.get_embedding_levels(text, storage)
    chars = list(storage["chars"])
    bidi_algorithm.explicit_embed_and_overrides(storage)
    bidi_algorithm.resolve_weak_types(storage)
    bidi_algorithm.resolve_neutral_types(storage, False)
    bidi_algorithm.resolve_implicit_levels(storage, False)
    kept = {id(c) for c in storage["chars"]}
    levels, last = [], base
    for c in chars:
        last = c["level"] if id(c) in kept else last
        levels.append(last)
    return levels, base


def paragraph_levels(text: str, isolated: list[bool], direction: str) -> tuple[list[int], int]:
    """Bidi levels of a paragraph whose `isolated` characters are data set into the report's own
    words: as UAX #9 isolates (FSI...PDI), each takes its direction from its own first strong
    character and cannot reorder the text around it. `direction` is 'auto', 'ltr' or 'rtl'."""
    base = {"ltr": 0, "rtl": 1}.get(direction)
    if not any(isolated):
        return bidi_levels(text, base)
    if base == 0 and not _RTL.search(text):
        return [0] * len(text), 0
    # Outside, an isolate is one neutral character (U+FFFC stands in for it).
    levels, base = bidi_levels("".join("\ufffc" if iso else ch for ch, iso in zip(text, isolated)), base)
    i, n = 0, len(text)
    while i < n:
        if not isolated[i]:
            i += 1
            continue
        j = i
        while j < n and isolated[j]:
            j += 1
        inner, inner_base = bidi_levels(text[i:j])
        outer = levels[i]
        start = outer + 1 if (outer + 1) % 2 == inner_base else outer + 2  # least level above, of its parity
        levels[i:j] = [level - inner_base + start for level in inner]
        i = j
    return levels, base


_RTL = re.compile("[\u0590-\u08FF\uFB1D-\uFDFF\uFE70-\uFEFF\u200F\u202B\u202E\u2067"
                  "\U00010800-\U00010FFF\U0001E800-\U0001EFFF]")
_CJK = re.compile("[\u2E80-\u9FFF\uAC00-\uD7AF\uF900-\uFAFF\uFF00-\uFFEF\U00020000-\U0003FFFF]")
_AFTER_SPACE = re.compile(r"\s+(?=\S)")


def _choose_fonts(drawn: list[int], bolds: list[bool], fonts: FontSet, missing: set[int]) -> list[GlyphFont]:
    """Each character's font: the first of the chain that has it, but spaces, punctuation, marks and
    format characters stay with the font before them when it has them (marks stay on their base's
    font, runs are not split needlessly). What no font has becomes U+FFFD in `drawn`."""
    chosen: list[GlyphFont] = []
    prev: GlyphFont | None = None
    first, sticky = fonts.first, fonts.sticky
    for i, cp in enumerate(drawn):
        if prev is not None and sticky(cp) and (cp in prev.cmap or is_default_ignorable(chr(cp))):
            font = prev
        else:
            font = first(cp, bolds[i])
        if font is None:
            chain = fonts.chain(bolds[i])
            if is_default_ignorable(chr(cp)) or unicodedata.category(chr(cp)) == "Cc":
                font = prev or chain[0]
            else:
                missing.add(cp)
                drawn[i] = REPLACEMENT
                font = first(REPLACEMENT, bolds[i]) or chain[0]
        chosen.append(font)
        prev = font
    return chosen


def shape_paragraph(text: str, bolds: list[bool], fonts: FontSet, lang: str, missing: set[int],
                    isolated: list[bool] | None = None, direction: str = "auto") -> _Para:
    """Fonts, bidi levels and glyphs for one paragraph (no newline inside). Code points that no font
    has are added to `missing` and drawn as U+FFFD."""
    levels, base = paragraph_levels(text, isolated or [False] * len(text), direction)
    drawn = [0x20 if ch == "\t" else ord(ch) for ch in text]
    regular, bold = fonts.regular[0], fonts.bold[0]
    used = set(drawn)
    if used <= regular.cmap and used <= bold.cmap:  # the common case: the primary font has it all
        chosen = [bold if b else regular for b in bolds]
    else:
        chosen = _choose_fonts(drawn, bolds, fonts, missing)

    runs: list[_Run] = []
    advance = [0.0] * len(text)
    cluster_starts: set[int] = set()
    start, n = 0, len(text)
    for i in range(1, n + 1):
        if i < n and chosen[i] is chosen[start] and levels[i] == levels[start]:
            continue
        font, level = chosen[start], levels[start]
        buf = hb.Buffer()
        buf.cluster_level = hb.BufferClusterLevel.MONOTONE_CHARACTERS
        buf.add_codepoints(drawn, start, i - start)  # the whole paragraph is context (Arabic joining)
        buf.direction = "rtl" if level % 2 else "ltr"
        buf.language = lang
        buf.guess_segment_properties()
        hb.shape(font.hb_font, buf)
        scale = 1000 / font.upem
        glyphs = []
        for info, pos in zip(buf.glyph_infos, buf.glyph_positions):
            x_adv, cluster = pos.x_advance * scale, info.cluster
            glyphs.append((info.codepoint, cluster, x_adv, pos.x_offset * scale, pos.y_offset * scale))
            advance[cluster] += x_adv
            cluster_starts.add(cluster)
        runs.append(_Run(start, i, font, level, glyphs))
        start = i

    starts = sorted(cluster_starts)
    ends = dict(zip(starts, starts[1:] + [n]))
    if _CJK.search(text):
        breaks = []
        for i in starts[1:]:
            before, here = text[i - 1], text[i]
            if here.isspace():
                continue
            if before.isspace() or (
                (_is_cjk(ord(before)) or _is_cjk(ord(here))) and here not in _NO_START and before not in _NO_END
            ):
                breaks.append(i)
    else:
        breaks = [m.end() for m in _AFTER_SPACE.finditer(text) if m.end() in ends]
    return _Para("".join(map(chr, drawn)), base, runs, advance, starts, ends, breaks)


class ScriptText(Flowable):
    """Spans of text in one size and colour, wrapped to the available width; splits across pages."""

    def __init__(self, spans: list[Span], fonts: FontSet, *, size: float, leading: float,
                 color=colors.black, align: str = "start", lang: str = "en", direction: str = "auto",
                 space_before: float = 0, space_after: float = 0, _shaped=None, _line_range=None):
        super().__init__()
        self.spans, self.fonts, self.size, self.leading = spans, fonts, size, leading
        self.color, self.align, self.lang, self.direction = color, align, lang, direction
        self.spaceBefore, self.spaceAfter = space_before, space_after
        self.missing: set[int] = set()
        self.paras = _shaped if _shaped is not None else self._shape()
        self._line_range = _line_range  # (first, last) when this is a part left by a split
        self._lines: list[tuple[_Para, int, int]] = []
        self._avail = None

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.spans)

    def _shape(self) -> list[_Para]:
        text = "".join(s.text for s in self.spans)
        bolds = [s.bold for s in self.spans for _ in s.text]
        isolated = [s.isolate for s in self.spans for _ in s.text]
        paras, pos = [], 0
        for part in text.split("\n"):
            paras.append(shape_paragraph(part, bolds[pos:pos + len(part)], self.fonts, self.lang, self.missing,
                                         isolated[pos:pos + len(part)], self.direction))
            pos += len(part) + 1
        return paras

    # --- layout ---------------------------------------------------------------------------------

    def _break(self, para: _Para, max_width: float) -> list[tuple[int, int]]:
        """Greedy lines [start, end) of one paragraph; a segment wider than a line breaks between clusters."""
        text, n = para.text, len(para.text)
        if n == 0:
            return [(0, 0)]
        scale = self.size / 1000
        prefix = [0.0]
        for a in para.advance:
            prefix.append(prefix[-1] + a * scale)

        def width(s, e):  # trailing spaces hang past the margin
            while e > s and text[e - 1].isspace():
                e -= 1
            return prefix[e] - prefix[s]

        lines, s = [], 0
        while s < n:
            k = bisect.bisect_right(para.breaks, s)
            best = None
            for b in para.breaks[k:] + [n]:
                if width(s, b) <= max_width + 1e-6:
                    best = b
                else:
                    break
            if best is None:
                k = bisect.bisect_right(para.cluster_starts, s)
                best = next((c for c in para.cluster_starts[k:] if width(s, c) > max_width), n)
                prev = [c for c in para.cluster_starts[k:] if c < best]
                best = prev[-1] if prev else best
            lines.append((s, best))
            s = best
        return lines

    def wrap(self, availWidth, availHeight):
        if self._lines and availWidth == self._avail:
            return self.width, self.height
        lines = [(p, s, e) for p in self.paras for s, e in self._break(p, availWidth)]
        if self._line_range is not None:
            lines = lines[self._line_range[0]:self._line_range[1]]
        self._lines = lines
        self._avail = availWidth
        self.width = availWidth
        self.height = len(lines) * self.leading
        return self.width, self.height

    def split(self, availWidth, availHeight):
        self.wrap(availWidth, availHeight)
        fit = int((availHeight + 1e-6) // self.leading)
        if fit <= 0 or fit >= len(self._lines):
            return [] if fit <= 0 else [self]
        first = self._line_range[0] if self._line_range else 0
        parts = [ScriptText(self.spans, self.fonts, size=self.size, leading=self.leading, color=self.color,
                            align=self.align, lang=self.lang, direction=self.direction,
                            space_before=sb, space_after=sa,
                            _shaped=self.paras, _line_range=rng)
                 for rng, sb, sa in (((first, first + fit), self.spaceBefore, 0),
                                     ((first + fit, first + len(self._lines)), 0, self.spaceAfter))]
        parts[0].missing = self.missing  # reported once, by the first part
        return parts

    def minWidth(self):
        return max((p.advance and max(p.advance) or 0) for p in self.paras) * self.size / 1000

    # --- drawing --------------------------------------------------------------------------------

    def _line_pieces(self, para: _Para, s: int, e: int):
        """The runs of one line as (run, glyphs) in visual order (UAX #9 rule L2)."""
        while e > s and para.text[e - 1].isspace():
            e -= 1
        pieces = []
        for run in para.runs:
            if run.end <= s or run.start >= e:
                continue
            glyphs = [g for g in run.glyphs if s <= g[1] < e]
            if glyphs:
                pieces.append((run, glyphs))
        if any(run.level for run, _ in pieces):
            top = max(run.level for run, _ in pieces)
            lowest_odd = min(run.level for run, _ in pieces if run.level % 2) if any(
                run.level % 2 for run, _ in pieces) else top + 1
            for level in range(top, lowest_odd - 1, -1):
                i = 0
                while i < len(pieces):
                    if pieces[i][0].level >= level:
                        j = i
                        while j < len(pieces) and pieces[j][0].level >= level:
                            j += 1
                        pieces[i:j] = pieces[i:j][::-1]
                        i = j
                    else:
                        i += 1
        return pieces

    def draw(self):
        canv = self.canv
        r, g, b = colors.toColor(self.color).rgb()
        code = ["BT", f"{fp_str(r, g, b)} rg"]
        scale = self.size / 1000
        for n, (para, s, e) in enumerate(self._lines):
            pieces = self._line_pieces(para, s, e)
            line_width = sum(gl[2] for _, glyphs in pieces for gl in glyphs) * scale
            align = self.align
            if align == "start":
                align = "right" if para.base_level % 2 else "left"
            x = {"left": 0, "right": self.width - line_width, "center": (self.width - line_width) / 2}[align]
            y = self.height - (n + 1) * self.leading + 0.25 * self.leading
            placed = []
            for run, glyphs in pieces:
                placed.append((run, glyphs, x))
                x += sum(gl[2] for gl in glyphs) * scale
            # Shown in logical order, each piece at its place: readers that go by content order
            # (pypdf) then read a right-to-left sentence broken by punctuation in another font
            # in order; readers that go by position (poppler) are not affected.
            for run, glyphs, px in sorted(placed, key=lambda p: p[0].start):
                self._show(code, canv._doc, para, run, glyphs, px, y)
        code.append("ET")
        canv._code.append("\n".join(code))

    def _show(self, code, doc, para: _Para, run: _Run, glyphs, x: float, y: float) -> None:
        """Append the operators that show one run piece from (x, y), glyphs in visual order.

        The text position advances by each glyph's W width; a TJ number closes the gap to where
        HarfBuzz placed the next glyph (kerning, marks); vertical offsets use the text rise.
        """
        font, size = run.font, self.size
        scale, to_tj = size / 1000, -1000 / size
        state = font.doc_state(doc)
        code.append(f"/{state.name} {fp_str(size)} Tf 1 0 0 1 {fp_str(x)} {fp_str(y)} Tm")
        rtl = run.level % 2 == 1
        text, ends, width = para.text, para.cluster_ends, font.width
        known = state.codes
        cur, rise, pen = x, 0.0, x
        tj: list[str] = []  # TJ elements: hex strings of codes, and numbers
        hexes: list[str] = []  # codes not yet closed into a hex string

        def flush():
            if hexes:
                tj.append(f"<{''.join(hexes)}>")
                hexes.clear()
            if tj:
                code.append(f"[{' '.join(tj)}] TJ")
                tj.clear()

        i, n = 0, len(glyphs)
        while i < n:
            c = glyphs[i][1]
            j = i + 1
            while j < n and glyphs[j][1] == c:  # HarfBuzz keeps a cluster's glyphs together
                j += 1
            chars = text[c:ends[c]]
            texts = (chars,) if j - i == 1 else _distribute(chars, j - i, rtl)
            shown, exact = [], True
            for (gid, _, x_adv, x_off, y_off), t in zip(glyphs[i:j], texts):
                cid = known.get((gid, t))
                if cid is None:
                    cid, same = state.code(gid, t)
                    exact = exact and same
                elif state.text[cid] != t:
                    exact = False
                shown.append((cid, gid, pen + x_off * scale, y_off * scale))
                pen += x_adv * scale
            i = j
            if not exact:  # a CFF glyph that reads back otherwise elsewhere: say what this cluster is
                flush()
                code.append(f"/Span <</ActualText <FEFF{chars.encode('utf-16-be').hex().upper()}>>> BDC")
            for cid, gid, gx, gy in shown:
                if gy != rise:
                    flush()
                    code.append(f"{fp_str(gy)} Ts")
                    rise = gy
                gap = gx - cur
                if gap > 1e-4 or gap < -1e-4:
                    if hexes:
                        tj.append(f"<{''.join(hexes)}>")
                        hexes.clear()
                    tj.append(fp_str(gap * to_tj))
                hexes.append(f"{cid:04X}")
                cur = gx + width(gid) * scale
            if not exact:
                flush()
                code.append("EMC")
        flush()
        if rise:
            code.append("0 Ts")


def _distribute(chars: str, glyphs: int, rtl: bool) -> list[str]:
    """What each glyph of a cluster (visual order) reads back as, so that the cluster reads as `chars`.

    Readers concatenate glyph texts in visual order, and for right-to-left text reverse that order,
    keeping a multi-character text whole. One character per glyph, the last glyph taking the rest;
    a glyph beyond the characters reads back as nothing.
    """
    if glyphs == 1:
        return [chars]
    units = list(chars[:glyphs - 1]) + [chars[glyphs - 1:]] if len(chars) >= glyphs else list(chars) + [""] * (glyphs - len(chars))
    return units[::-1] if rtl else units

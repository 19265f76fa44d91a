"""Fonts for every script a report may hold: discovery, per-character fallback and PDF embedding.

The report's own words are English, but participants write in their own language and trial names
come from anywhere. One font covers a few scripts at most, so text is drawn with a chain of fonts:
each character takes the first font whose cmap has it. Fonts come from packages, never from this
repository: Debian's Noto families (fonts-noto-core, fonts-noto-cjk), then DejaVu Sans (Debian's
fonts-dejavu-core, or the copy matplotlib ships, so a bare `pip install` still covers Latin, Greek
and Cyrillic), then ReportLab's own Vera as the last resort.

ReportLab's TTFont cannot embed CFF outlines (Noto CJK is CFF) and maps shaped glyphs that have no
code point to private-use characters, which text extraction then returns. So `GlyphFont` embeds a
font itself: a Type0 font, Identity-H, whose codes are glyph ids (CIDs for CID-keyed CFF), subset
by HarfBuzz, with a ToUnicode map from the glyphs actually drawn to the text they stand for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import uharfbuzz as hb
from reportlab.pdfbase import pdfdoc

# Where Debian installs fonts; matplotlib's copy of DejaVu is added by `_pip_font_dirs`.
SYSTEM_FONT_DIRS = (
    "/usr/share/fonts/truetype/noto",
    "/usr/share/fonts/opentype/noto",
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/truetype",
    "/usr/share/fonts/opentype",
)

# The fallback chain, first match wins: (regular file, bold file or None, face index in a collection).
# Noto Sans first: it covers Latin, Greek and Cyrillic, so most text needs no fallback at all.
# Face 0 of Noto Sans CJK is the Japanese cut; Chinese and Korean text is drawn with it too
# (same code points, regional glyph variants differ slightly).
FALLBACK_CHAIN = (
    ("NotoSans-Regular.ttf", "NotoSans-Bold.ttf", 0),
    ("NotoSansHebrew-Regular.ttf", "NotoSansHebrew-Bold.ttf", 0),
    ("NotoNaskhArabic-Regular.ttf", "NotoNaskhArabic-Bold.ttf", 0),
    ("NotoSansArabic-Regular.ttf", "NotoSansArabic-Bold.ttf", 0),
    ("NotoSansDevanagari-Regular.ttf", "NotoSansDevanagari-Bold.ttf", 0),
    ("NotoSansThai-Regular.ttf", "NotoSansThai-Bold.ttf", 0),
    ("NotoSansCJK-Regular.ttc", "NotoSansCJK-Bold.ttc", 0),
    ("NotoSansSymbols-Regular.ttf", "NotoSansSymbols-Bold.ttf", 0),
    ("NotoSansSymbols2-Regular.ttf", None, 0),
    ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", 0),
)
REPLACEMENT = 0xFFFD
_TAGS = ("GSUB", "GPOS", "GDEF", "BASE", "JSTF", "MATH", "VORG", "vhea", "vmtx", "DSIG", "kern", "name", "meta")


def _tag_numbers(tags) -> list[int]:
    """OpenType table tags as the numbers HarfBuzz's subset input takes."""
    return [int.from_bytes(t.encode(), "big") for t in tags]


_DROP_TABLES = _tag_numbers(_TAGS)
# HarfBuzz subsets a preprocessed face 2-6 times as fast, but preprocessing a Latin font takes 6-30 ms and
# 5 MiB: it paid for itself after 19-76 subsets (measured). So a process preprocesses a font once it has subset
# it this many times: a worker rendering a large shard gains, a short run pays nothing. Not Noto CJK's
# 65,535 glyphs: 0.8 s and 120 MiB a face (180 MiB for regular and bold), in every worker.
PREPROCESS_AFTER_SUBSETS = 128
PREPROCESS_MAX_GLYPHS = 10_000


def _pip_font_dirs() -> list[str]:
    """matplotlib ships DejaVu Sans (regular and bold): found without importing it (a slow import)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [str(Path(p) / "mpl-data" / "fonts" / "ttf") for p in spec.submodule_search_locations]


def _reportlab_font_dir() -> str:
    import reportlab

    return str(Path(reportlab.__file__).parent / "fonts")


def _cff_cids(cff: bytes, glyph_count: int) -> list[int] | None:
    """CID of every glyph of a CID-keyed CFF font (None when name-keyed: there CID = glyph id).

    PDF selects glyphs of a CID-keyed CFF font by CID through the font's charset, and HarfBuzz's
    subsetter keeps the original CIDs, so the codes drawn must be CIDs, not glyph ids.
    """

    def index(pos):
        count = struct.unpack_from(">H", cff, pos)[0]
        if count == 0:
            return [], pos + 2
        size = cff[pos + 2]
        offs = [int.from_bytes(cff[pos + 3 + i * size: pos + 3 + (i + 1) * size], "big") for i in range(count + 1)]
        base = pos + 2 + 1 + (count + 1) * size - 1
        return [cff[base + offs[i]: base + offs[i + 1]] for i in range(count)], base + offs[-1]

    def top_dict(data):
        ops, operands, i = {}, [], 0
        while i < len(data):
            b0 = data[i]
            if b0 <= 21:
                op = b0
                if b0 == 12:
                    op, i = 1200 + data[i + 1], i + 1
                ops[op], operands, i = operands, [], i + 1
            elif b0 == 28:
                operands.append(struct.unpack_from(">h", data, i + 1)[0]); i += 3
            elif b0 == 29:
                operands.append(struct.unpack_from(">i", data, i + 1)[0]); i += 5
            elif b0 == 30:  # real number: skip nibbles up to the 0xf terminator
                i += 1
                while data[i] & 0x0F != 0x0F and data[i] >> 4 != 0x0F:
                    i += 1
                i += 1; operands.append(0)
            elif 32 <= b0 <= 246:
                operands.append(b0 - 139); i += 1
            elif 247 <= b0 <= 250:
                operands.append((b0 - 247) * 256 + data[i + 1] + 108); i += 2
            elif 251 <= b0 <= 254:
                operands.append(-(b0 - 251) * 256 - data[i + 1] - 108); i += 2
            else:
                i += 1
        return ops

    _, pos = index(cff[2])  # names
    tops, _ = index(pos)
    ops = top_dict(tops[0])
    if 1230 not in ops:  # no ROS operator: name-keyed
        return None
    pos = ops[15][0]  # charset offset
    cids, fmt, pos = [0], cff[pos], pos + 1
    if fmt == 0:
        cids += list(struct.unpack_from(f">{glyph_count - 1}H", cff, pos))
    else:
        while len(cids) < glyph_count:
            first = struct.unpack_from(">H", cff, pos)[0]
            count = cff[pos + 2] if fmt == 1 else struct.unpack_from(">H", cff, pos + 2)[0]
            pos += 3 if fmt == 1 else 4
            cids += range(first, first + count + 1)
    return cids[:glyph_count]


class GlyphFont:
    """One font file (face) as HarfBuzz shapes it and as a PDF embeds it; one instance per process."""

    def __init__(self, path: str, index: int = 0):
        self.path, self.index = path, index
        self.face = hb.Face(hb.Blob.from_file_path(path), index)
        self.hb_font = hb.Font(self.face)  # scale = upem: advances in font units
        self.upem = self.face.upem
        self.cmap = frozenset(self.face.unicodes)
        self.ps_name = (self.face.get_name(hb.OTNameIdPredefined.POSTSCRIPT_NAME) or Path(path).stem).replace(" ", "")
        self.key = f"{Path(path).name}#{index}"
        tags = set(self.face.table_tags)
        self.is_cff = "CFF " in tags
        if not self.is_cff and "glyf" not in tags:
            raise ValueError(f"{path}: neither TrueType nor CFF outlines")
        self._cids = _cff_cids(self.face.reference_table("CFF ").data, self.face.glyph_count) if self.is_cff else None
        self._widths: dict[int, float] = {}
        head = self.face.reference_table("head").data
        scale = 1000 / self.upem
        self.bbox = [round(v * scale) for v in struct.unpack_from(">4h", head, 36)]
        extents = self.hb_font.get_font_extents("ltr")
        self.ascent, self.descent = round(extents.ascender * scale), round(extents.descender * scale)
        os2 = self.face.reference_table("OS/2").data
        cap = struct.unpack_from(">h", os2, 88)[0] if len(os2) >= 90 else 0
        self.cap_height = round(cap * scale) or self.ascent
        post = self.face.reference_table("post").data
        self.italic_angle = struct.unpack_from(">i", post, 4)[0] / 65536 if len(post) >= 8 else 0
        self._subset_face, self._subsets = self.face, 0
        # A CFF font is embedded as its CFF table alone: subsetting the others (Noto CJK's cmap of 65,000 code
        # points above all) would be thrown away, and took about half the time.
        self._drop_tables = _tag_numbers(sorted(tags - {"CFF "})) if self.is_cff else _DROP_TABLES

    def has(self, cp: int) -> bool:
        return cp in self.cmap

    def nominal_glyph(self, cp: int) -> int | None:
        return self.hb_font.get_nominal_glyph(cp)

    def cid(self, gid: int) -> int:
        """The CID of a glyph in a CID-keyed CFF font (its id otherwise)."""
        return self._cids[gid] if self._cids is not None else gid

    def width(self, gid: int) -> float:
        """Advance in thousandths of an em, rounded as the PDF's W array states it."""
        w = self._widths.get(gid)
        if w is None:
            w = self._widths[gid] = round(self.hb_font.get_glyph_h_advance(gid) * 1000 / self.upem, 2)
        return w

    def subset(self, gids: list[int]) -> tuple[bytes, str | None, dict[int, int]]:
        """The font program cut down by HarfBuzz to the glyphs drawn, its subtype, and new glyph ids.

        TrueType glyphs are renumbered (CIDToGIDMap says where each went); a CID-keyed CFF font
        keeps its CIDs, which is what the codes are; a name-keyed CFF font keeps its glyph ids,
        which PDF then takes as CIDs.
        """
        self._subsets += 1
        if self._subsets == PREPROCESS_AFTER_SUBSETS and self.face.glyph_count <= PREPROCESS_MAX_GLYPHS:
            self._subset_face = hb.subset_preprocess(self.face)  # same subsets, only faster
        inp = hb.SubsetInput()
        inp.glyph_set.update(gids)
        flags = hb.SubsetFlags.NO_HINTING | hb.SubsetFlags.NO_LAYOUT_CLOSURE
        if self.is_cff and self._cids is None:
            flags |= hb.SubsetFlags.RETAIN_GIDS
        inp.flags = flags
        for tag in self._drop_tables:
            inp.drop_table_tag_set.add(tag)
        plan = hb.SubsetPlan(self._subset_face, inp)
        subset = plan.execute()
        if subset is None:
            raise RuntimeError(f"HarfBuzz could not subset {self.path}")
        new_gid = dict(plan.old_to_new_glyph_mapping)
        if self.is_cff:
            return subset.reference_table("CFF ").data, "CIDFontType0C", new_gid
        return subset.blob.data, None, new_gid

    # --- per document ---------------------------------------------------------------------------

    def doc_state(self, doc) -> "_DocFont":
        """This font's glyphs used in one PDF document, kept on the document itself (no leak on failure)."""
        fonts = doc.__dict__.setdefault("_glyph_fonts", {})
        state = fonts.get(self.key)
        if state is None:
            name = f"G{len(doc.fontMapping) + 1}"
            doc.fontMapping[f"glyphfont:{self.key}"] = "/" + name
            state = fonts[self.key] = _DocFont(self, name)
            doc.delayedFonts.append(state)
        return state


@dataclass
class _DocFont:
    """The glyphs one document draws with one font, written out as a Type0 font when the PDF is saved.

    A code stands for a glyph *and* the text it is read back as, so one glyph can have several codes:
    the Devanagari vowel sign i drawn before its consonant reads back as that consonant, the
    consonant as the vowel sign, and the cluster reads in logical order in every PDF reader. For a
    CID-keyed CFF font the code must be the glyph's CID, so there a glyph has one text only.
    """

    font: GlyphFont
    name: str
    codes: dict[tuple[int, str], int] = field(default_factory=dict)  # (glyph id, text) -> code
    glyph: dict[int, int] = field(default_factory=dict)  # code -> glyph id
    text: dict[int, str] = field(default_factory=dict)  # code -> text

    def code(self, gid: int, text: str) -> tuple[int, bool]:
        """The code that shows `gid` and reads back as `text`; False when it reads back otherwise."""
        key = (gid, text)
        code = self.codes.get(key)
        if code is None:
            if self.font._cids is not None:
                code = self.font.cid(gid)
                self.text.setdefault(code, text)
            else:
                code = len(self.codes) + 1  # 0 stays unused: it is .notdef in every font
                self.text[code] = text
            self.codes[key] = code
            self.glyph[code] = gid
        return code, self.text[code] == text

    def addObjects(self, doc) -> None:  # ReportLab calls this for every entry of doc.delayedFonts
        font = self.font
        codes = sorted(self.glyph)
        gids = sorted(set(self.glyph.values()))
        tag = "".join(chr(65 + b % 26) for b in hashlib.sha256(repr(gids).encode()).digest()[:6])
        base = f"{tag}+{font.ps_name}"
        program, subtype, new_gid = font.subset(gids)
        stream = pdfdoc.PDFStream(content=program, filters=[pdfdoc.PDFZCompress])
        if subtype:
            stream.dictionary["Subtype"] = pdfdoc.PDFName(subtype)
        else:
            stream.dictionary["Length1"] = len(program)
        descriptor = pdfdoc.PDFDictionary({
            "Type": "/FontDescriptor",
            "FontName": pdfdoc.PDFName(base),
            "Flags": 4,  # symbolic: glyphs are chosen by id, not by a standard encoding
            "FontBBox": pdfdoc.PDFArray(font.bbox),
            "ItalicAngle": font.italic_angle,
            "Ascent": font.ascent,
            "Descent": font.descent,
            "CapHeight": font.cap_height,
            "StemV": 80,
            ("FontFile3" if font.is_cff else "FontFile2"): doc.Reference(stream, f"glyphfontfile:{font.key}"),
        })
        widths = []
        for code in codes:
            widths += [code, pdfdoc.PDFArray([font.width(self.glyph[code])])]
        cid_font = pdfdoc.PDFDictionary({
            "Type": "/Font",
            "Subtype": "/CIDFontType0" if font.is_cff else "/CIDFontType2",
            "BaseFont": pdfdoc.PDFName(base),
            "CIDSystemInfo": pdfdoc.PDFDictionary({
                "Registry": pdfdoc.PDFString("Adobe"), "Ordering": pdfdoc.PDFString("Identity"), "Supplement": 0}),
            "FontDescriptor": doc.Reference(descriptor, f"glyphfontdescriptor:{font.key}"),
            "W": pdfdoc.PDFArray(widths),
            "DW": 0,
        })
        if not font.is_cff:
            # code -> glyph id in the subset, two bytes each.
            cid_map = bytearray(2 * (codes[-1] + 1))
            for code in codes:
                cid_map[2 * code:2 * code + 2] = new_gid[self.glyph[code]].to_bytes(2, "big")
            cid_font["CIDToGIDMap"] = doc.Reference(
                pdfdoc.PDFStream(content=bytes(cid_map), filters=[pdfdoc.PDFZCompress]), f"glyphcidmap:{font.key}")
        to_unicode = pdfdoc.PDFStream(content=_to_unicode_cmap(
            [(code, self.text[code]) for code in codes]), filters=[pdfdoc.PDFZCompress])
        type0 = pdfdoc.PDFDictionary({
            "Type": "/Font",
            "Subtype": "/Type0",
            "BaseFont": pdfdoc.PDFName(base),
            "Encoding": "/Identity-H",
            "DescendantFonts": pdfdoc.PDFArray([doc.Reference(cid_font, f"glyphcidfont:{font.key}")]),
            "ToUnicode": doc.Reference(to_unicode, f"glyphtounicode:{font.key}"),
        })
        doc.idToObject["BasicFonts"].dict[self.name] = doc.Reference(type0, f"glyphfont:{font.key}")


def _to_unicode_cmap(pairs: list[tuple[int, str]]) -> bytes:
    """ToUnicode CMap: each 2-byte code to the UTF-16 of the text its glyph stands for."""
    lines = [
        "/CIDInit /ProcSet findresource begin", "12 dict begin", "begincmap",
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def",
        "/CMapName /Adobe-Identity-UCS def", "/CMapType 2 def",
        "1 begincodespacerange", "<0000> <FFFF>", "endcodespacerange",
    ]
    for i in range(0, len(pairs), 100):  # at most 100 entries per block
        chunk = pairs[i:i + 100]
        lines.append(f"{len(chunk)} beginbfchar")
        # A glyph that stands for no character (the second part of a split vowel) maps to nothing.
        lines += [f"<{c:04X}> <{t.encode('utf-16-be').hex().upper()}>" for c, t in chunk]
        lines.append("endbfchar")
    lines += ["endcmap", "CMapName currentdict /CMap defineresource pop", "end", "end"]
    return "\n".join(lines).encode("ascii")


@dataclass(frozen=True)
class FontSet:
    """The fallback chains for regular and bold text, in order of preference."""

    regular: tuple[GlyphFont, ...]
    bold: tuple[GlyphFont, ...]
    _first: dict = field(default_factory=dict, compare=False, repr=False)
    _sticky: dict = field(default_factory=dict, compare=False, repr=False)

    def first(self, cp: int, bold: bool) -> GlyphFont | None:
        """The first font of the chain with a glyph for `cp` (memoised: text loops call this per character)."""
        key = (cp, bold)
        try:
            return self._first[key]
        except KeyError:
            font = self._first[key] = next((f for f in self.chain(bold) if cp in f.cmap), None)
            return font

    def sticky(self, cp: int) -> bool:
        """Spaces, punctuation, marks and format characters stay with the font before them when it
        has them: a run is not split needlessly, and marks stay on their base's font."""
        try:
            return self._sticky[cp]
        except KeyError:
            value = self._sticky[cp] = unicodedata.category(chr(cp))[0] in "MZPC"
            return value

    @property
    def primary_path(self) -> str:
        return self.regular[0].path

    @property
    def primary_bold_path(self) -> str:
        return self.bold[0].path

    def chain(self, bold: bool) -> tuple[GlyphFont, ...]:
        return self.bold if bold else self.regular

    def describe(self) -> list[str]:
        return [f.key for f in self.regular]


def _find(name: str, dirs: Sequence[str]) -> str | None:
    for d in dirs:
        p = Path(d) / name
        if p.is_file():
            return str(p)
    return None


@lru_cache(maxsize=None)
def _load(path: str, index: int) -> GlyphFont | None:
    try:
        return GlyphFont(path, index)
    except Exception:  # an unreadable or unsupported file is skipped; the chain goes on without it
        return None


@lru_cache(maxsize=8)
def load_fonts(extra_fonts: tuple[str, ...] = (), font_dirs: tuple[str, ...] | None = None) -> FontSet:
    """The fallback chains, built once per process for each distinct argument.

    `extra_fonts` are font files tried before the built-in chain (for regular and bold text alike;
    'file.ttc#2' picks face 2 of a collection); `font_dirs` replaces the directories searched.
    Nothing here reads the environment: settings are the caller's business.
    """
    dirs = list(font_dirs) if font_dirs is not None else [*SYSTEM_FONT_DIRS, *_pip_font_dirs()]
    regular: list[GlyphFont] = []
    bold: list[GlyphFont] = []

    def add(chain, path, index):
        font = _load(path, index)
        if font is not None and font not in chain:
            chain.append(font)

    for spec in extra_fonts:
        path, _, index = str(spec).partition("#")
        add(regular, path, int(index or 0))
        add(bold, path, int(index or 0))
    for regular_name, bold_name, index in FALLBACK_CHAIN:
        path = _find(regular_name, dirs)
        if path is None:
            continue
        add(regular, path, index)
        bold_path = _find(bold_name, dirs) if bold_name else None
        add(bold, bold_path or path, index)
    vera_dir = [_reportlab_font_dir()]
    add(regular, _find("Vera.ttf", vera_dir), 0)
    add(bold, _find("VeraBd.ttf", vera_dir), 0)
    # Bold text falls back to regular faces of scripts that have no bold cut.
    for font in regular:
        if font not in bold:
            bold.append(font)
    return FontSet(tuple(regular), tuple(bold))


def is_default_ignorable(ch: str) -> bool:
    """Format characters (ZWJ, ZWNJ, bidi marks, variation selectors) draw nothing and need no glyph."""
    cp = ord(ch)
    return unicodedata.category(ch) == "Cf" or 0xFE00 <= cp <= 0xFE0F or 0xE0100 <= cp <= 0xE01EF

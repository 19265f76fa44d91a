"""Reports in the participant's language: catalogs, fallback, localized words, dates and numbers, /Lang.

Text is read back with pypdf (content order, ToUnicode) and, for Japanese, also with poppler's
pdftotext, as in test_render_scripts.
"""

from __future__ import annotations

import io
import re
import subprocess

import mongomock
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from pypdf import PdfReader

from reporting_pipeline.services import mongo
from reporting_pipeline.stages import render
from reporting_pipeline.stages.aggregate import aggregate_subscriber
from reporting_pipeline.stages.fetch import fetch_batch
from reporting_pipeline.stages.i18n import LOCALE_DIR, available_languages, language, resolve
from reporting_pipeline.stages.render import render_report_checked
from reporting_pipeline.stages.subscribe import ACTIVE, subscription_document

from .conftest import needs_poppler, pdf_text
from .test_aggregate import WEEK
from .test_render import bundle

CATALOGS = ("de", "en", "es", "fr", "ja")
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def lang_of(pdf: bytes) -> str:
    return PdfReader(io.BytesIO(pdf)).trailer["/Root"]["/Lang"]


def folded(text: str) -> str:
    return " ".join(text.split())


# --- catalogs -----------------------------------------------------------------------------------

def template():
    with (LOCALE_DIR / "reporting.pot").open("rb") as f:
        return read_po(f)


def test_the_five_catalogs_ship_and_are_found():
    assert available_languages() == CATALOGS


def test_the_template_holds_exactly_the_messages_the_code_uses():
    # `pybabel extract` with babel.cfg's settings, done here: a new or changed message fails until the
    # template (and every catalog, next test) is updated.
    used = {message if isinstance(message, str) else message[0]
            for _, _, message, *_ in extract_from_dir(
                str(LOCALE_DIR.parent), method_map=[("stages/**.py", "python")],
                keywords={"_": None, "N_": None, "n_": (1, 2)})}
    assert {m.id if isinstance(m.id, str) else m.id[0] for m in template() if m.id} == used


@pytest.mark.parametrize("lang", CATALOGS)
def test_every_catalog_translates_every_message_with_the_same_placeholders(lang):
    expected = {m.id: m for m in template() if m.id}
    with (LOCALE_DIR / lang / "LC_MESSAGES" / "reporting.po").open("rb") as f:
        catalog = read_po(f, locale=lang)
    messages = {m.id: m for m in catalog if m.id}
    assert set(messages) == set(expected)
    for msgid, message in messages.items():
        assert not message.fuzzy, msgid
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        ids = msgid if isinstance(msgid, tuple) else (msgid,)
        assert len(strings) == catalog.num_plurals if isinstance(msgid, tuple) else 1
        for text in strings:
            assert text, f"{lang}: {msgid!r} is not translated"
            assert set(PLACEHOLDER.findall(text)) == set(PLACEHOLDER.findall(ids[-1])), (lang, msgid)


@pytest.mark.parametrize("lang", [c for c in CATALOGS if c != "ja"])
def test_every_heading_word_fits_its_column_so_none_breaks_mid_word(lang):
    render._fonts()
    words = language(lang)
    for heading, width in zip(render.HEADER, render.COLUMN_WIDTHS):
        for word in words._(heading).split():
            assert render.pdfmetrics.stringWidth(word, render.FONT_BOLD, 8) <= width - 2 * render.CELL_PADDING, word


# --- which language -----------------------------------------------------------------------------

@pytest.mark.parametrize("requested, default, approved, used", [
    ("de-DE", None, None, "de-DE"),
    ("de-at", None, None, "de-AT"),  # region kept: dates and numbers as in Austria
    ("pt-BR", "de-DE", None, "de-DE"),  # no catalog: the trial's default
    ("pt-BR", None, None, "en"),  # ... then English
    ("pt-BR", "it-IT", None, "en"),  # the default without a catalog either
    ("not a tag!", "ja-JP", None, "ja-JP"),
    (None, None, None, "en"),
    ("fr-FR", "ja-JP", frozenset({"ja", "en"}), "ja-JP"),  # a catalog, but no approved texts in French
    ("en-GB", "ja-JP", frozenset({"ja", "en"}), "en-GB"),
    ("fr-FR", None, frozenset({"ja"}), "ja"),  # a definition without English: its own language is the last resort
])
def test_the_language_falls_back_to_the_trial_default_then_english(requested, default, approved, used):
    assert resolve(requested, default, approved) == used


# --- what the report says -----------------------------------------------------------------------

def rendered(lang: str, **overrides):
    report = aggregate_subscriber(bundle(language=lang, **overrides), "UTC")
    pdf, pages, issues = render_report_checked(report)
    return pdf, pdf_text(pdf)


# (language, texts the report must hold): headings, the week, a weekday, the decimal separator.
# RECORDS: systolic mean 130.0, min 110.0, change +10.0; weight 80.5 (kg).
EXPECTED = {
    "en": ["Weekly report: Heart", "Week of Nov 16 – 22, 2026", "Summary", "Charts", "Photos", "Diary",
           "Days with entries: 3 of 7.", "130.0", "80.5", "+10.0", "Tuesday, November 17, 2026", "16 Mon",
           "Page 1 of 2", "Change vs last week"],
    "de-DE": ["Wochenbericht: Heart", "Woche vom 16.–22. Nov. 2026", "Übersicht", "Verläufe", "Fotos", "Tagebuch",
              "Tage mit Einträgen: 3 von 7.", "130,0", "80,5", "+10,0", "Dienstag, 17. November 2026", "Mo., 16.",
              "Seite 1 von 2", "Änderung zur Vorwoche"],
    "fr-FR": ["Rapport hebdomadaire : Heart", "Semaine du 16–22 nov. 2026", "Résumé", "Graphiques", "Photos",
              "Journal", "130,0", "80,5", "+10,0", "mardi 17 novembre 2026", "lun. 16", "Page 1 sur 2"],
    "es-ES": ["Informe semanal: Heart", "Semana del 16–22 nov 2026", "Resumen", "Gráficos", "Fotos", "Diario",
              "130,0", "80,5", "+10,0", "martes, 17 de noviembre de 2026", "Página 1 de 2"],
    "ja-JP": ["週次レポート：Heart", "対象週：2026年11月16日～22日", "概要", "グラフ", "写真", "日記", "130.0",
              "80.5", "+10.0", "2026年11月17日火曜日", "16日(月)", "1 / 2 ページ"],
}


@pytest.mark.parametrize("lang", EXPECTED)
def test_the_report_is_in_the_participants_language(lang):
    pdf, text = rendered(lang)
    missing = [t for t in EXPECTED[lang] if folded(t) not in text]
    assert not missing, f"{lang}: {missing} not in {text[:600]}"
    assert lang_of(pdf) == lang
    assert PdfReader(io.BytesIO(pdf)).metadata.title == language(lang)._("Weekly report: {trial}",
                                                                          trial="Heart <Study> & Co")
    if lang != "en":
        assert "Summary" not in text and "Page 1 of" not in text


@needs_poppler
def test_japanese_words_read_back_with_poppler_too(tmp_path):
    pdf, _ = rendered("ja-JP")
    (tmp_path / "r.pdf").write_bytes(pdf)
    text = folded(subprocess.run(["pdftotext", str(tmp_path / "r.pdf"), "-"], capture_output=True, text=True,
                                 check=True).stdout)
    for word in ("週次レポート", "概要", "前週からの変化", "基準範囲外", "16日(月)", "機密"):
        assert word in text


def test_left_out_items_are_counted_in_the_language_with_its_plural():
    from reporting_pipeline.stages.fetch import FileItem

    from .test_render_scripts import note

    broken = [FileItem("x1", "text", WEEK.start_utc, "text/plain", b"\xff"),
              FileItem("x2", "text", WEEK.start_utc, "text/plain", b"\xfe"), note("ok")]
    assert "2 Einträge konnten nicht in diesen Bericht aufgenommen werden" in rendered("de-DE", files=broken)[1]
    assert "1 item could not be included" in rendered("en", files=broken[:1])[1]


def test_a_week_without_data_is_said_in_the_language():
    pdf, text = rendered("fr-FR", records=[], files=[])
    assert "Rien d’enregistré cette semaine" in text and lang_of(pdf) == "fr-FR"


# --- where the locale comes from ----------------------------------------------------------------

class CountingDb:
    """A database whose collections count the queries made through them."""

    def __init__(self, db):
        self.db, self.queries = db, 0

    def __getitem__(self, name):
        collection, outer = self.db[name], self

        class Counting:
            def __getattr__(self, attr):
                if attr in ("find", "find_one", "aggregate", "count_documents"):
                    outer.queries += 1
                return getattr(collection, attr)
        return Counting()


def enroll(db, n: int, trial: str, locale: str | None) -> dict:
    enrollment = {"_id": f"enr-{n}", "trial_id": trial, "participant_id": f"P-{n}", "email": f"p{n}@example.org",
                  "status": "active", "consent_electronic_reports": True,
                  **({"locale": locale} if locale else {})}
    db[mongo.ENROLLMENTS].insert_one(enrollment)
    return subscription_document(enrollment, timezone=None, status=ACTIVE, now=WEEK.start_utc)


def test_the_enrollments_locale_decides_with_a_constant_number_of_queries():
    db = mongomock.MongoClient(tz_aware=True).db
    db[mongo.TRIALS].insert_many([{"_id": "T-DE", "name": "Studie", "default_locale": "de-DE"},
                                  {"_id": "T-PLAIN", "name": "Study"}])
    subs = [enroll(db, 1, "T-DE", "ja-JP"), enroll(db, 2, "T-DE", "pt-BR"), enroll(db, 3, "T-PLAIN", "pt-BR"),
            enroll(db, 4, "T-PLAIN", None), enroll(db, 5, "T-DE", None), enroll(db, 6, "T-PLAIN", "fr-CA")]
    subs.append({**subscription_document({"_id": "enr-x", "trial_id": "T-DE", "participant_id": "P-x"},
                                         timezone=None, status=ACTIVE, now=WEEK.start_utc), "enrollment_id": None})
    counting = CountingDb(db)
    bundles = fetch_batch(counting, WEEK, "00", subs)
    assert [b.language for b in bundles] == ["ja-JP", "de-DE", "en", "en", "de-DE", "fr-CA", "de-DE"]
    # One query per collection, whatever the batch size.
    few = CountingDb(db)
    fetch_batch(few, WEEK, "00", subs[:1])
    assert counting.queries == few.queries == 4

    # And the PDF says which language it used.
    pdf, _, _ = render_report_checked(aggregate_subscriber(bundles[1], "UTC"))
    assert lang_of(pdf) == "de-DE"
    pdf, _, _ = render_report_checked(aggregate_subscriber(bundles[2], "UTC"))
    assert lang_of(pdf) == "en"

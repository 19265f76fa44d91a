"""The participant's language: gettext catalogs for the report's and the email's own words, Babel for
dates, numbers and weekday names.

Catalogs are the `.po` files under `reporting_pipeline/locale/<language>/LC_MESSAGES/reporting.po`,
read at run time (compiled in memory, once per process): nothing to build after a fresh clone, and the
wheel carries them as package data. A language is supported when it has a catalog.

Which language a report is in (`resolve`): the participant's locale if its language has a catalog (and,
for a trial with a report definition, approved texts), else the trial's default locale, else English.
The tag kept is the one asked for (`de-AT` stays `de-AT`, so dates and numbers follow Austria); the
texts come from its language's catalog.
"""

from __future__ import annotations

import gettext
import io
import re
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_interval, format_skeleton, format_time
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import parse_pattern

LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"
DOMAIN = "reporting"
FALLBACK = "en"

# A BCP 47 tag as enrollments carry them: language, optional script and region (de-DE, zh-Hant-TW, es-419).
_TAG_RE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z]{4})?(?:[-_](?:[A-Za-z]{2}|\d{3}))?")


def N_(message: str) -> str:
    """Marks a message for extraction whose translation is looked up later (module-level constants)."""
    return message


@lru_cache(maxsize=1)
def available_languages() -> tuple[str, ...]:
    """Languages with a catalog, e.g. ('de', 'en', 'es', 'fr', 'ja')."""
    return tuple(sorted(p.parent.parent.name for p in LOCALE_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.po")))


def parse_tag(tag: object) -> Locale | None:
    """The Babel locale of a BCP 47 tag, or None when it is not one (or names no locale CLDR knows)."""
    if not isinstance(tag, str) or not _TAG_RE.fullmatch(tag.strip()):
        return None
    return _parse(tag.strip().replace("_", "-"))


@lru_cache(maxsize=256)
def _parse(tag: str) -> Locale | None:
    try:
        return Locale.parse(tag, sep="-")
    except (UnknownLocaleError, ValueError):
        return None


def language_of(tag: object) -> str | None:
    """The language subtag of a tag ('de' for 'de-DE'), or None when the tag is not valid."""
    locale = parse_tag(tag)
    return locale.language if locale else None


def canonical_tag(tag: str) -> str:
    """'de_de' -> 'de-DE': the form PDF /Lang and HTML lang take."""
    locale = parse_tag(tag)
    if locale is None:
        raise ValueError(f"not a language tag: {tag!r}")
    return "-".join(part for part in (locale.language, locale.script, locale.territory) if part)


def resolve(requested: object, trial_default: object = None, approved: frozenset[str] | None = None) -> str:
    """The language tag a report is written in: the first of (participant's locale, trial default,
    English) whose language has a catalog and, when `approved` is given (a report definition's
    languages), approved texts."""
    for candidate in (requested, trial_default):
        language = language_of(candidate)
        if language in available_languages() and (approved is None or language in approved):
            return canonical_tag(candidate)
    if approved and FALLBACK not in approved:
        # A definition without English: its default language is the last resort (validation makes
        # sure the default is approved and has a catalog).
        return canonical_tag(sorted(approved & set(available_languages()))[0])
    return FALLBACK


@lru_cache(maxsize=16)
def _translations(language: str) -> gettext.NullTranslations:
    """The catalog of one language, compiled in memory from its .po file (fuzzy entries left out)."""
    path = LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    if not path.exists():
        return gettext.NullTranslations()
    with path.open("rb") as po:
        catalog = read_po(po, locale=language, domain=DOMAIN)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


class Language:
    """Words, dates and numbers in one locale. One instance per tag and process (`language()`)."""

    def __init__(self, tag: str):
        self.tag = canonical_tag(tag)
        self.locale = parse_tag(self.tag)
        self.code = self.locale.language
        self._t = _translations(self.code)
        self._patterns: dict = {}

    def __repr__(self) -> str:
        return f"Language({self.tag!r})"

    # --- words ----------------------------------------------------------------------------------

    def _(self, message: str, **values) -> str:
        text = self._t.gettext(message)
        return text.format(**values) if values else text

    def n_(self, singular: str, plural: str, n: int, **values) -> str:
        return self._t.ngettext(singular, plural, n).format(n=self.integer(n), **values)

    # --- numbers --------------------------------------------------------------------------------

    def _pattern(self, decimals: int, signed: bool, grouped: bool = True):
        # Parsed once per (decimals, sign, grouping): Babel's format_decimal would parse the pattern every call.
        key = (decimals, signed, grouped)
        if key not in self._patterns:
            body = ("#,##0" if grouped else "0") + ("." + "0" * decimals if decimals else "")
            self._patterns[key] = parse_pattern(f"+{body};-{body}" if signed else body)
        return self._patterns[key]

    def number(self, value: float, decimals: int = 1) -> str:
        """1234.5 -> '1,234.5' (en), '1.234,5' (de), '1 234,5' (fr)."""
        return self._pattern(decimals, False).apply(value, self.locale)

    def signed(self, value: float, decimals: int = 1) -> str:
        """A change, always with its sign: '+10.0', '-2,5'."""
        return self._pattern(decimals, True).apply(value, self.locale)

    def integer(self, value: int) -> str:
        return self._pattern(0, False).apply(value, self.locale)

    def plain_number(self, value: float, decimals: int) -> str:
        """Without grouping, for chart axes (narrow group separators would need another font)."""
        return self._pattern(decimals, False, grouped=False).apply(value, self.locale)

    # --- dates ----------------------------------------------------------------------------------

    def week_range(self, monday: date, sunday: date) -> str:
        """'Nov 16 – 22, 2026' (en), '16.–22. Nov. 2026' (de), '2026年11月16日～22日' (ja)."""
        return format_interval(monday, sunday, "yMMMd", locale=self.locale)

    def day_short(self, day: date) -> str:
        """A chart axis day: '16 Mon' (en), 'Mo., 16.' (de), '16日(月)' (ja)."""
        return format_skeleton("Ed", day, locale=self.locale)

    def date_short(self, day: date) -> str:
        """A photo caption: 'Mon, Nov 16' (en), 'Mo., 16. Nov.' (de)."""
        return format_skeleton("MMMEd", day, locale=self.locale)

    def date_long(self, day: date) -> str:
        """A diary heading: 'Monday, November 16, 2026' (en), 'Montag, 16. November 2026' (de)."""
        return format_date(day, "full", locale=self.locale)

    def moment_utc(self, moment: datetime) -> str:
        """A link's expiry in UTC: 'Nov 30, 2026, 9:00 AM UTC' (en), '30.11.2026, 09:00 UTC' (de)."""
        pattern = self.locale.datetime_formats["medium"]
        text = pattern.format(format_time(moment, "short", tzinfo=moment.tzinfo, locale=self.locale),
                              format_date(moment, "medium", locale=self.locale))
        return f"{text} UTC"


@lru_cache(maxsize=64)
def language(tag: str = FALLBACK) -> Language:
    return Language(tag)

"""A trial's report definition: what its participants' reports show, as its sponsor and ethics
committee approved it.

A definition lives in its trial's document (`trials.report_definition`) and is checked twice: when it
is written (`reporting-pipeline trials validate|put FILE`) and when reports are built (fetch), so a
definition changed behind the CLI's back still cannot produce a wrong report: that trial's reports
fail with an `invalid_report_definition` dead letter instead, and no other trial's are touched.

Schema version 1 (README, "Report definitions", has a complete example):

    schema_version   1
    trial_id         the trial's `_id`
    version          the approved version of this definition (recorded on every report it renders)
    default_locale   BCP 47 tag: the report's language when the participant's is not approved
    languages        language subtags the texts are approved in, e.g. ["de", "en"]; each needs a catalog
    metrics          in report order: key (the records' metric), label (per language), unit (text or
                     per language), decimals (0-4), reference_range {low, high} (optional)
    sections         which of summary, charts, photos, diary appear, in this order
    intro, contact   optional approved texts, per language
    logo             optional S3 key of the trial's logo (PNG or JPEG) in the reports bucket

A trial without a definition gets the built-in report: every metric its records have, labelled from
the metric's name, one decimal, the records' own units and reference ranges, every section.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from reporting_pipeline.errors import InvalidReportDefinition

from .i18n import available_languages, canonical_tag, language_of

SCHEMA_VERSION = 1
SECTIONS = ("summary", "charts", "photos", "diary")
FIELDS = {"schema_version", "trial_id", "version", "default_locale", "languages", "metrics", "sections", "intro",
          "contact", "logo"}
METRIC_FIELDS = {"key", "label", "unit", "decimals", "reference_range"}
MAX_METRICS = 30
MAX_LABEL = 80
MAX_UNIT = 24
MAX_TEXT = 1200
MAX_DECIMALS = 4
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Participant files and rendered reports share the bucket: a logo must never be read from there.
FORBIDDEN_LOGO_PREFIXES = ("files/", "reports/")


@dataclass(frozen=True)
class MetricSpec:
    key: str
    labels: dict[str, str]
    units: dict[str, str]
    decimals: int = 1
    low: float | None = None
    high: float | None = None

    def label(self, language: str) -> str:
        return self.labels.get(language) or next(iter(self.labels.values()))

    def unit(self, language: str) -> str:
        return self.units.get(language, next(iter(self.units.values()), ""))


@dataclass(frozen=True)
class ReportDefinition:
    trial_id: str
    version: str
    default_locale: str
    languages: frozenset[str]
    metrics: tuple[MetricSpec, ...]
    sections: tuple[str, ...] = SECTIONS
    intro: dict[str, str] = field(default_factory=dict)
    contact: dict[str, str] = field(default_factory=dict)
    logo: str | None = None

    def metric(self, key: str) -> MetricSpec | None:
        return next((m for m in self.metrics if m.key == key), None)

    def text(self, texts: dict[str, str], language: str) -> str | None:
        """An approved text in `language`, else in the default language (a report rendered in another)."""
        return texts.get(language) or texts.get(language_of(self.default_locale))


@dataclass(frozen=True)
class DefinitionError:
    """One problem, at a field path such as `metrics[1].label.fr`."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class _Checker:
    def __init__(self):
        self.errors: list[DefinitionError] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(DefinitionError(path, message))

    def string(self, value, path: str, *, limit: int, required: bool = True) -> str | None:
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            self.error(path, "must be a non-empty string" if value is None or isinstance(value, str)
                       else f"must be a string, got {_kind(value)}")
            return None
        if len(value) > limit:
            self.error(path, f"is longer than {limit} characters")
            return None
        return value.strip()

    def texts(self, value, path: str, languages: list[str], *, limit: int) -> dict[str, str]:
        """Approved text per language: exactly one for every language of `languages`."""
        if not isinstance(value, Mapping):
            self.error(path, f"must be an object of texts by language, got {_kind(value)}")
            return {}
        out = {}
        for lang in languages:
            if lang not in value:
                self.error(f"{path}.{lang}", "is missing (every language in `languages` needs one)")
        for lang, text in value.items():
            if lang not in languages:
                self.error(f"{path}.{lang}", f"{lang!r} is not one of `languages` ({', '.join(languages)})")
                continue
            checked = self.string(text, f"{path}.{lang}", limit=limit)
            if checked is not None:
                out[lang] = checked
        return out

    def number(self, value, path: str) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.error(path, f"must be a finite number, got {_kind(value)}")
            return None
        return float(value)


def _kind(value) -> str:
    return {type(None): "null", bool: "true/false", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def validate_definition(doc, trial_id: str | None = None) -> tuple[ReportDefinition | None, list[DefinitionError]]:
    """Check a definition document: (the definition, []) when valid, else (None, every problem found).

    `trial_id`: the trial it must belong to (when loading it from that trial's document).
    """
    c = _Checker()
    if not isinstance(doc, Mapping):
        c.error("(definition)", f"must be an object, got {_kind(doc)}")
        return None, c.errors
    for name in sorted(set(doc) - FIELDS):
        c.error(name, "is not a field of a report definition")

    version_of_schema = doc.get("schema_version")
    if version_of_schema != SCHEMA_VERSION or isinstance(version_of_schema, bool):
        c.error("schema_version", f"must be {SCHEMA_VERSION} (the only schema version this release reads), "
                                  f"got {version_of_schema!r}")
    owner = c.string(doc.get("trial_id"), "trial_id", limit=200)
    if owner and trial_id is not None and owner != trial_id:
        c.error("trial_id", f"is {owner!r} but the definition is stored on trial {trial_id!r}")
    version = doc.get("version")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    version = c.string(version, "version", limit=64)
    if version is not None and not _VERSION_RE.fullmatch(version):
        # It goes into S3 object metadata and PDF metadata: plain ASCII.
        c.error("version", f"must be letters, digits, '.', '_' or '-' (e.g. \"2026-11.2\"), got {version!r}")

    catalogs = available_languages()
    languages: list[str] = []
    raw_languages = doc.get("languages")
    if not isinstance(raw_languages, list) or not raw_languages:
        c.error("languages", "must be a non-empty list of language subtags, e.g. [\"de\", \"en\"]")
    else:
        for i, lang in enumerate(raw_languages):
            path = f"languages[{i}]"
            if not isinstance(lang, str) or language_of(lang) != lang:
                c.error(path, f"must be a lower-case language subtag such as \"de\", got {lang!r}")
            elif lang not in catalogs:
                c.error(path, f"{lang!r} has no catalog (available: {', '.join(catalogs)})")
            elif lang in languages:
                c.error(path, f"{lang!r} is listed twice")
            else:
                languages.append(lang)

    default_locale = doc.get("default_locale")
    if language_of(default_locale) is None:
        c.error("default_locale", f"must be a BCP 47 language tag such as \"de-DE\", got {default_locale!r}")
        default_locale = None
    elif languages and language_of(default_locale) not in languages:
        c.error("default_locale", f"its language {language_of(default_locale)!r} is not one of `languages`")
    else:
        default_locale = canonical_tag(default_locale)

    metrics: list[MetricSpec] = []
    raw_metrics = doc.get("metrics")
    if not isinstance(raw_metrics, list) or not raw_metrics:
        c.error("metrics", "must be a non-empty list of metric definitions")
    elif len(raw_metrics) > MAX_METRICS:
        c.error("metrics", f"has {len(raw_metrics)} entries; at most {MAX_METRICS}")
    else:
        keys = set()
        for i, raw in enumerate(raw_metrics):
            path = f"metrics[{i}]"
            if not isinstance(raw, Mapping):
                c.error(path, f"must be an object, got {_kind(raw)}")
                continue
            for name in sorted(set(raw) - METRIC_FIELDS):
                c.error(f"{path}.{name}", "is not a field of a metric definition")
            key = c.string(raw.get("key"), f"{path}.key", limit=100)
            if key in keys:
                c.error(f"{path}.key", f"{key!r} is defined twice")
            keys.add(key)
            labels = c.texts(raw.get("label"), f"{path}.label", languages, limit=MAX_LABEL)
            unit = raw.get("unit", "")
            if isinstance(unit, str):
                if len(unit) > MAX_UNIT:
                    c.error(f"{path}.unit", f"is longer than {MAX_UNIT} characters")
                units = {lang: unit.strip() for lang in languages} or {"": unit.strip()}
            else:
                units = c.texts(unit, f"{path}.unit", languages, limit=MAX_UNIT)
            decimals = raw.get("decimals", 1)
            if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= MAX_DECIMALS:
                c.error(f"{path}.decimals", f"must be a whole number from 0 to {MAX_DECIMALS}, got {decimals!r}")
                decimals = 1
            low = high = None
            ref = raw.get("reference_range")
            if ref is not None:
                if not isinstance(ref, Mapping):
                    c.error(f"{path}.reference_range", f"must be an object with low and/or high, got {_kind(ref)}")
                else:
                    for name in sorted(set(ref) - {"low", "high"}):
                        c.error(f"{path}.reference_range.{name}", "is not low or high")
                    low = c.number(ref.get("low"), f"{path}.reference_range.low")
                    high = c.number(ref.get("high"), f"{path}.reference_range.high")
                    if ref.get("low") is None and ref.get("high") is None:
                        c.error(f"{path}.reference_range", "needs low, high or both")
                    elif low is not None and high is not None and low > high:
                        c.error(f"{path}.reference_range", f"low ({low:g}) is above high ({high:g})")
            if key and labels:
                metrics.append(MetricSpec(key, labels, units, decimals, low, high))

    sections = doc.get("sections", list(SECTIONS))
    if not isinstance(sections, list) or not sections:
        c.error("sections", f"must be a non-empty list of {', '.join(SECTIONS)}")
        sections = []
    else:
        for i, name in enumerate(sections):
            if name not in SECTIONS:
                c.error(f"sections[{i}]", f"must be one of {', '.join(SECTIONS)}, got {name!r}")
            elif sections.index(name) != i:
                c.error(f"sections[{i}]", f"{name!r} is listed twice")

    intro = c.texts(doc["intro"], "intro", languages, limit=MAX_TEXT) if doc.get("intro") is not None else {}
    contact = c.texts(doc["contact"], "contact", languages, limit=MAX_TEXT) if doc.get("contact") is not None else {}

    logo = c.string(doc.get("logo"), "logo", limit=1024, required=False)
    if logo is not None and (logo.startswith("/") or ".." in logo.split("/")
                             or logo.startswith(FORBIDDEN_LOGO_PREFIXES)):
        c.error("logo", "must be an S3 key outside files/ and reports/, without a leading '/' or '..'")

    if c.errors:
        return None, c.errors
    return ReportDefinition(
        trial_id=owner, version=version, default_locale=default_locale, languages=frozenset(languages),
        metrics=tuple(metrics), sections=tuple(sections), intro=intro, contact=contact, logo=logo,
    ), []


def parse_definition(doc, trial_id: str | None = None) -> ReportDefinition:
    """The definition, or InvalidReportDefinition naming every problem (field paths, no data)."""
    definition, errors = validate_definition(doc, trial_id)
    if errors:
        owner = trial_id or (doc.get("trial_id") if isinstance(doc, Mapping) else None) or "?"
        raise InvalidReportDefinition(
            f"trial {owner}: report definition is invalid ({len(errors)} problem(s)): "
            + "; ".join(map(str, errors)), str(owner))
    return definition


def definition_of_trial(trial: Mapping | None) -> ReportDefinition | None:
    """The definition stored on a trial's document; None when it has none (the built-in report).

    Raises InvalidReportDefinition when it has one that does not validate.
    """
    if not trial or trial.get("report_definition") is None:
        return None
    return parse_definition(trial["report_definition"], str(trial.get("_id")))


def trial_default_locale(trial: Mapping | None, definition: ReportDefinition | None) -> str | None:
    """The trial's default language: its definition's, else the trial document's `default_locale`."""
    if definition is not None:
        return definition.default_locale
    return (trial or {}).get("default_locale")

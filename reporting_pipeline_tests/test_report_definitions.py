"""A trial's report definition: validated when written (CLI) and when loaded (fetch), rendered as
approved, recorded on every report; a broken one fails that trial's reports only."""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import subprocess
import sys

import pytest
from pypdf import PdfReader

from reporting_pipeline.apps import cli
from reporting_pipeline.local.seed import CARDIO_DEFINITION, GLU_DEFINITION, logo_bytes, seed
from reporting_pipeline.services import mongo
from reporting_pipeline.services.objectstore import put_if_changed
from reporting_pipeline.settings import Settings
from reporting_pipeline.sharding import shard_ids
from reporting_pipeline.stages.aggregate import aggregate_subscriber
from reporting_pipeline.stages.definitions import parse_definition, validate_definition
from reporting_pipeline.stages.render import render_report_checked
from reporting_pipeline.stages.stream import BuildJob, build_shard
from reporting_pipeline.weeks import Week

from .conftest import LAST_WEEK, NOW, pdf_image_count, pdf_text
from .test_aggregate import RECORDS, rec
from .test_render import bundle


def broken(**changes) -> dict:
    """The seed's German definition with `changes` (dotted paths; None deletes)."""
    doc = copy.deepcopy(CARDIO_DEFINITION)
    for path, value in changes.items():
        *parents, last = path.split(".")
        target = doc
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        key = int(last) if last.isdigit() else last
        if value is None:
            del target[key]
        else:
            target[key] = value
    return doc


def test_the_seeds_definitions_are_valid():
    for doc in (CARDIO_DEFINITION, GLU_DEFINITION):
        definition, errors = validate_definition(doc)
        assert errors == [] and definition.version == doc["version"]


@pytest.mark.parametrize("doc, path, words", [
    (broken(schema_version=2), "schema_version", "must be 1"),
    (broken(**{"metrics.0.label.fr": None}), "metrics[0].label.fr", "is missing"),
    (broken(**{"metrics.0.label.it": "Pressione"}), "metrics[0].label.it", "not one of `languages`"),
    (broken(**{"metrics.1.decimals": 9}), "metrics[1].decimals", "from 0 to 4"),
    (broken(**{"metrics.0.reference_range": {"low": 150, "high": 90}}), "metrics[0].reference_range", "above high"),
    (broken(**{"metrics.2.key": "systolic_bp"}), "metrics[2].key", "defined twice"),
    (broken(**{"metrics.0.colour": "red"}), "metrics[0].colour", "not a field"),
    (broken(languages=["de", "en", "fr", "pt"]), "languages[3]", "has no catalog"),
    (broken(default_locale="ja-JP"), "default_locale", "not one of `languages`"),
    (broken(default_locale="Deutsch!"), "default_locale", "BCP 47"),
    (broken(sections=["summary", "graphs"]), "sections[1]", "must be one of"),
    (broken(logo="files/TRIAL-CARDIO-01/P-1/photo.jpg"), "logo", "outside files/ and reports/"),
    (broken(version="version 2!"), "version", "letters, digits"),
    (broken(intro="Hello"), "intro", "texts by language"),
    (broken(metrics=[]), "metrics", "non-empty"),
    (broken(colour="red"), "colour", "not a field"),
])
def test_each_problem_names_its_field(doc, path, words):
    definition, errors = validate_definition(doc)
    assert definition is None
    assert any(e.path == path and words in e.message for e in errors), errors


def test_loading_checks_the_definition_belongs_to_its_trial():
    with pytest.raises(Exception) as info:
        parse_definition(CARDIO_DEFINITION, "TRIAL-OTHER")
    assert info.value.code == "invalid_report_definition"
    assert "trial_id" in str(info.value) and "TRIAL-OTHER" in str(info.value)


# --- the CLI ------------------------------------------------------------------------------------

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "reporting_pipeline.apps.cli", *args], capture_output=True,
                          text=True, timeout=120, env=os.environ.copy())


def test_validate_prints_every_problem_with_its_field_path_and_exits_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("""
schema_version: 1
trial_id: TRIAL-CARDIO-01
version: "4"
default_locale: de-DE
languages: [de, en]
metrics:
  - key: systolic_bp
    label: {de: Blutdruck}
    decimals: 7
sections: [summary, photoz]
""")
    done = run_cli("trials", "validate", str(bad))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    for expected in ("metrics[0].label.en: is missing", "metrics[0].decimals: must be a whole number from 0 to 4",
                     "sections[1]: must be one of summary, charts, photos, diary"):
        assert any(line.startswith(f"{bad}: {expected}") for line in lines), (expected, lines)
    assert "3 problem(s)" in done.stderr


def test_validate_accepts_a_valid_definition_in_json_or_yaml(tmp_path):
    good = tmp_path / "cardio.json"
    good.write_text(json.dumps(CARDIO_DEFINITION, ensure_ascii=False))
    done = run_cli("trials", "validate", str(good))
    assert done.returncode == 0, done.stderr
    assert "valid report definition (trial TRIAL-CARDIO-01, version 2026-10.1, languages de, en, fr" in done.stdout
    garbage = tmp_path / "garbage.yaml"
    garbage.write_text("metrics: [unclosed")
    done = run_cli("trials", "validate", str(garbage))
    assert done.returncode == 1 and "not valid JSON or YAML" in done.stderr


def test_put_stores_a_valid_definition_and_refuses_a_reused_version(pipeline, tmp_path, capsys):
    pipeline.db[mongo.TRIALS].insert_one({"_id": "TRIAL-CARDIO-01", "name": "CARDIO-01"})
    settings = Settings.from_env(pipeline.env)

    def put(doc) -> int:
        path = tmp_path / "definition.json"
        path.write_text(json.dumps(doc))
        return cli._trials(argparse.Namespace(action="put", file=str(path), settings=settings))

    assert put(CARDIO_DEFINITION) == 1  # its logo is not in the bucket yet
    assert "logo: no object at key trials/TRIAL-CARDIO-01/logo.png" in capsys.readouterr().err
    put_if_changed(pipeline.s3, pipeline.bucket, CARDIO_DEFINITION["logo"], logo_bytes((1, 2, 3, 255)), "image/png",
                   pipeline.encryption)
    assert put(CARDIO_DEFINITION) == 0
    stored = pipeline.db[mongo.TRIALS].find_one({"_id": "TRIAL-CARDIO-01"})
    assert stored["report_definition"] == CARDIO_DEFINITION and stored["name"] == "CARDIO-01"
    # Reports record the version that rendered them: a changed text needs a new version.
    assert put(broken(**{"contact.en": "Call us."})) == 1
    assert "version 2026-10.1 is stored already with other content" in capsys.readouterr().err
    assert put(broken(**{"contact.en": "Call us."}, version="2026-10.2")) == 0
    assert put(broken(trial_id="TRIAL-NOPE")) == 1


# --- the report it renders ----------------------------------------------------------------------

def defined_report(lang="en", **bundle_overrides):
    definition = parse_definition(broken(logo=None))
    return aggregate_subscriber(bundle(definition=definition, language=lang, trial_id="TRIAL-CARDIO-01",
                                      **bundle_overrides), "UTC")


def test_the_report_shows_the_definitions_metrics_labels_decimals_ranges_and_texts():
    records = RECORDS + [rec(17, 9, "heart_rate", 71.0, unit="bpm"), rec(17, 9, "steps", 5000.0, unit="steps")]
    report = defined_report("de-DE", records=records)
    # Its metrics only, in its order; systolic against the approved range (90-140): 150 is out of it.
    assert list(report.summary["metric"]) == ["systolic_bp", "heart_rate", "weight"]
    assert report.summary.set_index("metric").loc["systolic_bp", "out_of_range"] == 1
    pdf, _, _ = render_report_checked(report)
    text = pdf_text(pdf)
    assert text.index("Blutdruck (systolisch)") < text.index("Puls") < text.index("Körpergewicht")
    assert "Schläge/min" in text  # the unit in the report's language
    assert "130 " in text and "130,0" not in text  # decimals: 0 for blood pressure
    assert "80,5" in text  # 1 for weight
    assert "steps" not in text.lower()  # not in the approved report
    assert CARDIO_DEFINITION["intro"]["de"][:40] in text and CARDIO_DEFINITION["contact"]["de"] in text
    assert "Kontakt" in text
    assert PdfReader(io.BytesIO(pdf)).metadata.subject == "Report definition TRIAL-CARDIO-01 version 2026-10.1"


def test_sections_the_definition_leaves_out_are_not_drawn():
    definition = parse_definition(broken(logo=None, sections=["charts", "summary"]))
    report = aggregate_subscriber(bundle(definition=definition, language="en"), "UTC")
    pdf, _, _ = render_report_checked(report)
    text = pdf_text(pdf)
    assert "Photos" not in text and "Diary" not in text and "dizzy" not in text
    assert text.index("Charts") < text.index("Summary")
    assert pdf_image_count(pdf) == 0


def test_a_record_in_another_unit_is_left_out_not_shown_under_the_wrong_one():
    report = defined_report(records=RECORDS + [rec(18, 9, "weight", 180.0, unit="lb")])
    assert [(i.code, i.ref) for i in report.issues] == [("unit_mismatch", "r189weight")]
    assert report.summary.set_index("metric").loc["weight", "max"] == 80.5


def test_the_logo_is_drawn_once_at_the_top():
    definition = parse_definition(CARDIO_DEFINITION)
    report = aggregate_subscriber(bundle(definition=definition, language="fr-FR", files=[],
                                         logo=logo_bytes((200, 40, 60, 255))), "UTC")
    pdf, _, _ = render_report_checked(report)
    assert pdf_image_count(pdf) == 1
    assert report.logo.width <= 600 and report.logo.height <= 200


def test_a_trial_without_a_definition_keeps_the_built_in_report():
    report = aggregate_subscriber(bundle(), "UTC")
    pdf, _, _ = render_report_checked(report)
    text = pdf_text(pdf)
    assert "Systolic bp" in text and "Weight" in text and "130.0" in text  # labels from the metric names
    assert report.definition_version is None
    assert PdfReader(io.BytesIO(pdf)).metadata.subject == "Built-in report layout (no report definition)"


# --- in the pipeline ----------------------------------------------------------------------------

def build(pipeline, week: Week):
    job = BuildJob(pipeline.env["AWS_ENDPOINT_URL"], None, pipeline.bucket, "UTC")
    [shard] = shard_ids(1)
    return build_shard(pipeline.db, pipeline.s3, pipeline.encryption, job, week=week, shard_id=shard, shard_count=1,
                       batch_size=50, workers=1)


def test_a_broken_definition_fails_only_its_own_trials_reports(pipeline):
    # Both trials' participants in one shard (one shard in all), one trial's definition broken behind
    # the CLI's back.
    seeded = seed(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=8, weeks=1, now=NOW,
                  photos=False)
    db = pipeline.db
    db[mongo.TRIALS].update_one({"_id": "TRIAL-CARDIO-01"}, {"$set": {"report_definition.metrics.1.decimals": 9}})
    week = Week.from_key(LAST_WEEK, "UTC")

    summary = build(pipeline, week)

    trial_of = {s["_id"]: s["trial_id"] for s in db[mongo.SUBSCRIPTIONS].find()}
    cardio = sorted(s for s in seeded.subscription_ids if trial_of[s] == "TRIAL-CARDIO-01")
    glu = sorted(s for s in seeded.subscription_ids if trial_of[s] == "TRIAL-GLU-02")
    assert len(cardio) == len(glu) == 4
    dead = list(db[mongo.DEAD_LETTERS].find({"status": "open"}))
    assert sorted(d["subscription_id"] for d in dead) == cardio
    for letter in dead:
        assert (letter["stage"], letter["code"], letter["transient"]) == ("fetch", "invalid_report_definition", False)
        assert "trial TRIAL-CARDIO-01" in letter["message"] and "metrics[1].decimals" in letter["message"]
    reports = {r["subscription_id"]: r for r in db[mongo.REPORTS].find()}
    assert sorted(reports) == glu and summary.rendered == 4
    assert {r["definition_version"] for r in reports.values()} == {"3"}
    assert {r["language"] for r in reports.values()} <= {"ja-JP", "en", "es-ES"}

    # Fixed (by `trials put` in real life): a redriven build renders them and resolves the letters.
    db[mongo.TRIALS].update_one({"_id": "TRIAL-CARDIO-01"}, {"$set": {"report_definition.metrics.1.decimals": 0}})
    build(pipeline, week)
    assert db[mongo.DEAD_LETTERS].count_documents({"status": "open"}) == 0
    versions = {r["subscription_id"]: r["definition_version"] for r in db[mongo.REPORTS].find()}
    assert {versions[s] for s in cardio} == {"2026-10.1"}
    # The object carries it too, so a record rebuilt from the object keeps language and version.
    stored = db[mongo.REPORTS].find_one({"subscription_id": cardio[0]})
    metadata = pipeline.s3.head_object(Bucket=pipeline.bucket, Key=stored["s3_key"])["Metadata"]
    assert metadata["definition-version"] == "2026-10.1" and metadata["language"] == stored["language"]


def test_a_missing_logo_fails_its_trials_reports_as_a_definition_problem(pipeline):
    seed(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=4, weeks=1, now=NOW,
         photos=False)
    pipeline.db[mongo.TRIALS].update_one({"_id": "TRIAL-CARDIO-01"},
                                         {"$set": {"report_definition.logo": "trials/TRIAL-CARDIO-01/gone.png"}})
    build(pipeline, Week.from_key(LAST_WEEK, "UTC"))
    dead = list(pipeline.db[mongo.DEAD_LETTERS].find())
    assert len(dead) == 2 and {d["code"] for d in dead} == {"invalid_report_definition"}
    assert all("logo: no object at key trials/TRIAL-CARDIO-01/gone.png" in d["message"] for d in dead)
    assert pipeline.db[mongo.REPORTS].count_documents({}) == 2

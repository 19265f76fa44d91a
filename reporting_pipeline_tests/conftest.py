"""Fixtures: real S3 (moto's HTTP server) and SMTP (aiosmtpd) servers, MongoDB through mongomock."""

from __future__ import annotations

import io
import os
import shutil
import signal
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

# A suite started in the background by a script (`make test &`, nohup) inherits SIGINT ignored, and an ignored
# signal stays ignored in every process it starts: the code servers the termination tests stop would never shut
# down. Python's own handler is reset to the default in a started program, so the test's processes get it back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Short waits in tests: step retries and in-step backoff keep their shape, not their production length.
os.environ.setdefault("REPORT_STEP_RETRY_DELAY_SECONDS", "0.05")
os.environ.setdefault("REPORT_RETRY_BASE_SECONDS", "0.02")

import pytest  # noqa: E402
from dagster import DagsterInstance
from pypdf import PdfReader

from reporting_pipeline.local.embedded import Outbox, embedded_services
from reporting_pipeline.services import mongo
from reporting_pipeline.services.objectstore import Encryption, make_client

# A fixed "now": Saturday 28 Nov 2026, so the last complete week is 16-22 Nov 2026.
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LAST_WEEK = "2026-11-16"


# How pytest-xdist hands out the tests with `--dist loadfile` (`make test`): a file's tests go to one worker
# together, sharing its module fixtures, but those of SPREAD files (long tests, no module fixtures) go one by
# one to whichever worker is free; and the longest work is handed out first, not the files with the most
# tests (a long file begun last runs alone at the end while the other workers idle).
SPREAD = ("test_faults.py", "test_termination.py", "test_production.py")
LONGEST_FIRST = ("test_postgres_daemon.py", "test_dev_stack.py", "test_faults.py", "test_termination.py",
                 "test_production.py", "test_cli.py", "test_pipeline_e2e.py", "test_subscriptions.py",
                 "test_redrive.py", "test_privacy.py", "test_runs.py")


def pytest_collection_modifyitems(items):
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests stay in order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LongestFirst(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid if nodeid.split("::")[0].rsplit("/", 1)[-1] in SPREAD else super()._split_scope(nodeid)

    config.option.loadscopereorder = False  # the collection's order (above), not the most tests first
    return LongestFirst(config, log)


@dataclass
class Pipeline:
    env: dict
    outbox: Outbox
    db: object
    s3: object
    bucket: str
    encryption: Encryption
    workdir: Path

    def definitions(self, **settings):
        """The definitions of a deployment configured by this environment, with `settings` changed."""
        from reporting_pipeline.defs.definitions import build_definitions
        from reporting_pipeline.settings import Settings

        return build_definitions(Settings.from_env(**settings))


@pytest.fixture
def pipeline(tmp_path) -> Pipeline:
    # moto keeps its state per process: a bucket of its own keeps each test's objects apart.
    bucket = f"reports-{uuid.uuid4().hex[:12]}"
    with embedded_services(tmp_path, outbox_folder=tmp_path / "outbox", bucket=bucket) as (env, outbox):
        yield Pipeline(
            env=env,
            outbox=outbox,
            db=mongo.connect(env["MONGODB_URI"])["reporting"],
            s3=make_client(env["AWS_ENDPOINT_URL"]),
            bucket=env["REPORTS_BUCKET"],
            encryption=Encryption(),
            workdir=tmp_path,
        )


@contextmanager
def seeded_wire_server(s3, bucket: str, encryption: Encryption, *, now: datetime = NOW, **spec):
    """A MongoDB-wire server (mongoeco) holding what `seed` writes (test_seed.py shows it is the same): the seed's
    files uploaded to `bucket` first, its documents loaded in the server's own process as `reporting-pipeline
    dev` loads them, several times faster than through the wire. Yields the server and the subscription ids."""
    from reporting_pipeline.local.seed import SeedSpec, plan, upload_objects
    from reporting_pipeline.local.wire_mongo import MongoWireServer
    from reporting_pipeline.services.objectstore import ensure_bucket
    from reporting_pipeline.stages.subscribe import subscription_id

    spec = SeedSpec(now=now.isoformat(), **spec)
    ensure_bucket(s3, bucket)
    upload_objects(s3, bucket, encryption, spec)
    with MongoWireServer(seed=spec) as server:
        yield server, [subscription_id(p.enrollment["trial_id"], p.enrollment["participant_id"]) for p in plan(spec)]


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as inst:
        yield inst


# poppler-utils reads our PDFs as an independent reader: text (pdftotext), fonts (pdffonts), pixels (pdftoppm).
needs_poppler = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("pdftotext", "pdffonts", "pdftoppm")),
    reason="poppler-utils (pdftotext, pdffonts, pdftoppm) is not installed (.ci/install-fonts.sh installs it)")


def pdf_text(data: bytes) -> str:
    """All text of a PDF as a real reader extracts it, whitespace folded (titles may wrap)."""
    reader = PdfReader(io.BytesIO(data))
    return " ".join(" ".join(page.extract_text() or "" for page in reader.pages).split())


def pdf_image_count(data: bytes) -> int:
    reader = PdfReader(io.BytesIO(data))
    return sum(len(page.images) for page in reader.pages)

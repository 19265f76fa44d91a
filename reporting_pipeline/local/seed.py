"""Synthetic trial data: trials, enrollments, subscriptions, weeks of measurements, diary notes, photos.

`plan` makes the data (deterministic: the same spec gives the same ids and bytes); `seed` writes it the
way production data is written (each file uploaded before its record). The local stand-ins load the
same plan into their own storage in-process (`seed_documents`, `seed_objects`), which is what makes
`reporting-pipeline dev` with 1,000 subscribers start in seconds rather than minutes. Seeding twice
with the same spec adds nothing.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from PIL import Image, ImageDraw
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from reporting_pipeline.services import mongo
from reporting_pipeline.services.objectstore import Encryption, put_if_changed
from reporting_pipeline.stages.store import file_document, file_metadata
from reporting_pipeline.stages.subscribe import ACTIVE, subscription_document
from reporting_pipeline.weeks import Week, last_complete_week

# metric: (unit, reference low, reference high, typical value, day-to-day spread)
METRICS = {
    "systolic_bp": ("mmHg", 90.0, 140.0, 124.0, 11.0),
    "heart_rate": ("bpm", 50.0, 100.0, 72.0, 9.0),
    "weight": ("kg", None, None, 78.0, 0.6),
    "glucose": ("mmol/L", 3.9, 7.8, 6.1, 1.2),
}
TRIALS = [
    ("TRIAL-CARDIO-01", "CARDIO-01 Blood Pressure Study", ["systolic_bp", "heart_rate", "weight"]),
    ("TRIAL-GLU-02", "GLU-02 Glucose Monitoring Study", ["glucose", "weight", "heart_rate"]),
]
DIARY_LINES = [
    "Slept well, walked 30 minutes after lunch.",
    "Felt a bit tired in the afternoon; skipped the evening walk.",
    "Took the morning dose with breakfast. Mild headache <b>before</b> noon & gone by 2pm.",
    "Busy day at work; ate late. Blood pressure reading felt rushed.",
    "Cycled to the market. Knee OK. Notes for the nurse: ask about dose timing?",
    "Weekend trip, measurements taken at the hotel <i>before</i> breakfast.",
]
INSERT_BATCH = 100  # MongoDB-wire servers used locally slow down sharply with larger batches



def _insert_new(collection, docs: list[dict]) -> None:
    """Insert documents whose deterministic ids may already exist (re-seeding)."""
    for i in range(0, len(docs), INSERT_BATCH):
        try:
            collection.insert_many(docs[i:i + INSERT_BATCH], ordered=False)
        except BulkWriteError as error:
            if any(e.get("code") != 11000 for e in error.details.get("writeErrors", [])):
                raise


def photo_bytes(rng: random.Random, width: int = 960, height: int = 720) -> bytes:
    """A JPEG like a phone photo: EXIF says 'rotate 90' and carries a camera model and GPS tags."""
    image = Image.new("RGB", (width, height), tuple(rng.randrange(60, 200) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(30, 160)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    exif[0x0110] = "SynthPhone 12"  # Model
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}  # GPSInfo
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80, exif=exif)
    return out.getvalue()


@dataclass(frozen=True)
class SeedSpec:
    """What to seed; JSON-able, so a stand-in server process can be given the same spec."""

    subscribers: int = 24
    weeks: int = 3
    timezone: str = "UTC"
    now: str = ""  # ISO time the weeks end before; empty: now
    rng_seed: int = 7
    photos: bool = True

    def now_utc(self) -> datetime:
        return datetime.fromisoformat(self.now) if self.now else datetime.now(UTC)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SeedSpec:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class SeedFile:
    file_id: str
    trial_id: str
    participant_id: str
    recorded_at: datetime
    kind: str
    content_type: str
    extension: str
    data: bytes

    def document(self) -> dict:
        return file_document(file_id=self.file_id, trial_id=self.trial_id, participant_id=self.participant_id,
                             recorded_at=self.recorded_at, kind=self.kind, content_type=self.content_type,
                             extension=self.extension, data=self.data)


@dataclass
class SeedParticipant:
    enrollment: dict
    records: list[dict]
    files: list[SeedFile]


@dataclass
class SeedResult:
    subscription_ids: list[str] = field(default_factory=list)
    weeks: list[str] = field(default_factory=list)
    records: int = 0
    files: int = 0


def report_weeks(spec: SeedSpec) -> list[Week]:
    last = last_complete_week(spec.now_utc(), spec.timezone)
    return [Week(last.monday - timedelta(days=7 * i), spec.timezone) for i in reversed(range(spec.weeks))]


def plan(spec: SeedSpec) -> Iterator[SeedParticipant]:
    """The participants of `spec`, one at a time, with their weeks of records and files."""
    rng = random.Random(spec.rng_seed)
    weeks = report_weeks(spec)
    tz = ZoneInfo(spec.timezone)
    photo_pool = [photo_bytes(random.Random(spec.rng_seed * 1000 + i)) for i in range(4)] if spec.photos else []
    for n in range(spec.subscribers):
        trial_id, _, metrics = TRIALS[n % len(TRIALS)]
        participant_id = f"P-{spec.rng_seed:02d}{n:06d}"
        enrollment = {
            "_id": f"enr-{trial_id}-{participant_id}",
            "trial_id": trial_id,
            "participant_id": participant_id,
            "email": f"participant{n + 1:05d}@example.org",
            "status": "active",
            "consent_electronic_reports": True,
            "enrolled_at": weeks[0].start_utc - timedelta(days=14),
            "updated_at": weeks[0].start_utc - timedelta(days=14),
        }
        baseline = {m: METRICS[m][3] + rng.gauss(0, METRICS[m][4]) for m in metrics}
        records, files = [], []
        for week in weeks:
            for day in week.days:
                if rng.random() < 0.2:  # a missed day: adherence is rarely perfect
                    continue
                for metric in metrics:
                    unit, low, high, _, spread = METRICS[metric]
                    at = datetime.combine(day, time(7 + rng.randrange(12), rng.randrange(60)), tzinfo=tz)
                    value = round(baseline[metric] + rng.gauss(0, spread), 1)
                    records.append({
                        "_id": f"rec-{participant_id}-{metric}-{at:%Y%m%d%H%M}",
                        "trial_id": trial_id,
                        "participant_id": participant_id,
                        "recorded_at": at.astimezone(UTC),
                        "metric": metric,
                        "value": value,
                        "unit": unit,
                        "reference_range": {"low": low, "high": high},
                    })
            for k in range(rng.randrange(1, 3)):
                at = datetime.combine(week.days[rng.randrange(7)], time(21, 10 * k), tzinfo=tz).astimezone(UTC)
                text = "\n".join(rng.sample(DIARY_LINES, 2))
                files.append(SeedFile(f"note-{participant_id}-{week.key}-{k}", trial_id, participant_id, at, "text",
                                      "text/plain; charset=utf-8", "txt", text.encode("utf-8")))
            if photo_pool and rng.random() < 0.7:
                at = datetime.combine(week.days[rng.randrange(7)], time(12), tzinfo=tz).astimezone(UTC)
                files.append(SeedFile(f"photo-{participant_id}-{week.key}", trial_id, participant_id, at, "image",
                                      "image/jpeg", "jpg", rng.choice(photo_pool)))
        yield SeedParticipant(enrollment, records, files)


def seed_documents(db: Database, spec: SeedSpec, progress=None,
                   before_documents: Callable[[SeedParticipant], None] | None = None) -> SeedResult:
    """Write the trials, enrollments, subscriptions, records and file records of `spec`.

    `before_documents` runs for each participant before any of its documents is written (`seed` uploads
    the files there, so no record ever points at a missing object).
    """
    mongo.ensure_indexes(db)
    now = spec.now_utc()
    result = SeedResult(weeks=[w.key for w in report_weeks(spec)])
    _insert_new(db[mongo.TRIALS], [{"_id": t, "name": name, "metrics": metrics} for t, name, metrics in TRIALS])
    # In this order: a subscription appears only after its participant's records and files, so a run
    # reading a shared database while it is seeded never reports on half a participant.
    pending: dict[str, list[dict]] = {mongo.RECORDS: [], mongo.FILES: [], mongo.ENROLLMENTS: [],
                                      mongo.SUBSCRIPTIONS: []}

    def flush(at_least: int) -> None:
        if sum(map(len, pending.values())) >= at_least:
            for name, docs in pending.items():
                _insert_new(db[name], docs)
                docs.clear()

    for n, participant in enumerate(plan(spec)):
        if before_documents:
            before_documents(participant)
        subscription = subscription_document(participant.enrollment, timezone=None, status=ACTIVE, now=now)
        result.subscription_ids.append(subscription["_id"])
        pending[mongo.ENROLLMENTS].append(participant.enrollment)
        pending[mongo.SUBSCRIPTIONS].append(subscription)
        pending[mongo.RECORDS] += participant.records
        pending[mongo.FILES] += [{**f.document(), "uploaded_at": now} for f in participant.files]
        result.records += len(participant.records)
        result.files += len(participant.files)
        flush(10 * INSERT_BATCH)
        if progress and (n + 1) % 100 == 0:
            progress(n + 1, spec.subscribers)
    flush(1)
    return result


def seed_objects(put: Callable[[SeedFile], None], spec: SeedSpec) -> int:
    """Hand every file of `spec` to `put`; the number of files."""
    count = 0
    for participant in plan(spec):
        for f in participant.files:
            put(f)
            count += 1
    return count


def seed(
    db: Database,
    s3,
    bucket: str,
    encryption: Encryption,
    *,
    subscribers: int = 24,
    weeks: int = 3,
    timezone: str = "UTC",
    now: datetime | None = None,
    rng_seed: int = 7,
    photos: bool = True,
    progress=None,
) -> SeedResult:
    """Create `subscribers` subscribed participants with `weeks` complete weeks of data before `now`,
    through the production write path: each file uploaded, then its record written."""
    spec = SeedSpec(subscribers, weeks, timezone, (now or datetime.now(UTC)).isoformat(), rng_seed, photos)

    def upload(participant: SeedParticipant) -> None:
        for f in participant.files:
            put_if_changed(s3, bucket, f.document()["s3_key"], f.data, f.content_type, encryption,
                           metadata=file_metadata(f.recorded_at))

    return seed_documents(db, spec, progress, before_documents=upload)

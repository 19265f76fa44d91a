"""Synthetic trial data: trials, enrollments, subscriptions, weeks of measurements, diary notes, photos.

Files go through the same upload-then-metadata path as production data. Ids are deterministic, so
seeding twice with the same arguments adds nothing.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from PIL import Image, ImageDraw
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from . import mongo
from .objectstore import Encryption
from .store import store_file
from .subscribe import ACTIVE, subscribe
from .weeks import Week, last_complete_week

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


@dataclass
class SeedResult:
    subscription_ids: list[str] = field(default_factory=list)
    weeks: list[str] = field(default_factory=list)
    records: int = 0
    files: int = 0


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
    """Create `subscribers` subscribed participants with `weeks` complete weeks of data before `now`."""
    mongo.ensure_indexes(db)
    rng = random.Random(rng_seed)
    now = now or datetime.now(UTC)
    last = last_complete_week(now, timezone)
    report_weeks = [Week(last.monday - timedelta(days=7 * i), timezone) for i in reversed(range(weeks))]
    result = SeedResult(weeks=[w.key for w in report_weeks])
    tz = ZoneInfo(timezone)
    photo_pool = [photo_bytes(random.Random(rng_seed * 1000 + i)) for i in range(4)] if photos else []

    _insert_new(db[mongo.TRIALS], [{"_id": t, "name": name, "metrics": metrics} for t, name, metrics in TRIALS])
    for n in range(subscribers):
        trial_id, _, metrics = TRIALS[n % len(TRIALS)]
        participant_id = f"P-{rng_seed:02d}{n:06d}"
        _insert_new(db[mongo.ENROLLMENTS], [{
            "_id": f"enr-{trial_id}-{participant_id}",
            "trial_id": trial_id,
            "participant_id": participant_id,
            "email": f"participant{n + 1:05d}@example.org",
            "status": "active",
            "consent_electronic_reports": True,
            "enrolled_at": report_weeks[0].start_utc - timedelta(days=14),
            "updated_at": report_weeks[0].start_utc - timedelta(days=14),
        }])
        subscription, _ = subscribe(db, trial_id, participant_id, now=now, status=ACTIVE)
        result.subscription_ids.append(subscription["_id"])

        baseline = {m: METRICS[m][3] + rng.gauss(0, METRICS[m][4]) for m in metrics}
        records = []
        for week in report_weeks:
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
                store_file(db, s3, bucket, encryption, file_id=f"note-{participant_id}-{week.key}-{k}",
                           trial_id=trial_id, participant_id=participant_id, recorded_at=at, kind="text",
                           content_type="text/plain; charset=utf-8", extension="txt", data=text.encode("utf-8"))
                result.files += 1
            if photo_pool and rng.random() < 0.7:
                at = datetime.combine(week.days[rng.randrange(7)], time(12), tzinfo=tz).astimezone(UTC)
                store_file(db, s3, bucket, encryption, file_id=f"photo-{participant_id}-{week.key}",
                           trial_id=trial_id, participant_id=participant_id, recorded_at=at, kind="image",
                           content_type="image/jpeg", extension="jpg", data=rng.choice(photo_pool))
                result.files += 1
        _insert_new(db[mongo.RECORDS], records)
        result.records += len(records)
        if progress and (n + 1) % 100 == 0:
            progress(n + 1, subscribers)
    return result

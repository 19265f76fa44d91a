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
from reporting_pipeline.stages.store import file_document, file_key, file_metadata
from reporting_pipeline.stages.subscribe import ACTIVE, subscription_document
from reporting_pipeline.weeks import Week, last_complete_week

# metric: (unit, reference low, reference high, typical value, day-to-day spread)
METRICS = {
    "systolic_bp": ("mmHg", 90.0, 140.0, 124.0, 11.0),
    "heart_rate": ("bpm", 50.0, 100.0, 72.0, 9.0),
    "weight": ("kg", None, None, 78.0, 0.6),
    "glucose": ("mmol/L", 3.9, 7.8, 6.1, 1.2),
}
# Two trials with report definitions of their own: a German one (texts approved in German, English and
# French, with a logo) and a Japanese one (Japanese, English and Spanish; no photos section).
CARDIO_DEFINITION = {
    "schema_version": 1,
    "trial_id": "TRIAL-CARDIO-01",
    "version": "2026-10.1",
    "default_locale": "de-DE",
    "languages": ["de", "en", "fr"],
    "metrics": [
        {"key": "systolic_bp", "unit": "mmHg", "decimals": 0, "reference_range": {"low": 90, "high": 140},
         "label": {"de": "Blutdruck (systolisch)", "en": "Blood pressure (systolic)",
                   "fr": "Pression artérielle (systolique)"}},
        {"key": "heart_rate", "unit": {"de": "Schläge/min", "en": "bpm", "fr": "bpm"}, "decimals": 0,
         "reference_range": {"low": 50, "high": 100},
         "label": {"de": "Puls", "en": "Heart rate", "fr": "Fréquence cardiaque"}},
        {"key": "weight", "unit": "kg", "decimals": 1, "label": {"de": "Körpergewicht", "en": "Body weight",
                                                                 "fr": "Poids"}},
    ],
    "sections": ["summary", "charts", "photos", "diary"],
    "intro": {
        "de": "Diese Übersicht zeigt, was Sie in der letzten Woche erfasst haben. Sie ersetzt kein Gespräch "
              "mit dem Studienteam.",
        "en": "This overview shows what you recorded last week. It does not replace a conversation with the "
              "study team.",
        "fr": "Ce récapitulatif présente vos saisies de la semaine passée. Il ne remplace pas un échange avec "
              "l’équipe de l’étude.",
    },
    "contact": {
        "de": "Fragen? Rufen Sie Ihre Studienschwester an: +49 30 1234 5678 (Mo.–Fr., 9–16 Uhr).",
        "en": "Questions? Call your study nurse at +49 30 1234 5678 (Mon–Fri, 9 am–4 pm).",
        "fr": "Des questions ? Appelez votre infirmière d’étude au +49 30 1234 5678 (lun.–ven., 9 h–16 h).",
    },
    "logo": "trials/TRIAL-CARDIO-01/logo.png",
}
GLU_DEFINITION = {
    "schema_version": 1,
    "trial_id": "TRIAL-GLU-02",
    "version": "3",
    "default_locale": "ja-JP",
    "languages": ["ja", "en", "es"],
    "metrics": [
        {"key": "glucose", "unit": "mmol/L", "decimals": 1, "reference_range": {"low": 3.9, "high": 7.8},
         "label": {"ja": "血糖値", "en": "Blood glucose", "es": "Glucosa en sangre"}},
        {"key": "weight", "unit": "kg", "decimals": 1, "label": {"ja": "体重", "en": "Body weight", "es": "Peso"}},
        {"key": "heart_rate", "unit": {"ja": "拍/分", "en": "bpm", "es": "lpm"}, "decimals": 0,
         "label": {"ja": "脈拍", "en": "Heart rate", "es": "Frecuencia cardiaca"}},
    ],
    "sections": ["summary", "charts", "diary"],
    "intro": {
        "ja": "先週の記録のまとめです。気になる点は研究チームにご相談ください。",
        "en": "A summary of what you recorded last week. Please talk to the study team about anything that "
              "worries you.",
        "es": "Resumen de lo que registró la semana pasada. Consulte con el equipo del estudio cualquier duda.",
    },
    "contact": {
        "ja": "ご質問は治験コーディネーター（03-1234-5678、平日9時～17時）までお電話ください。",
        "en": "Questions? Call your study coordinator at +81 3-1234-5678 (weekdays, 9:00–17:00).",
        "es": "¿Preguntas? Llame a su coordinador del estudio al +81 3-1234-5678 (días laborables, 9:00–17:00).",
    },
}
# (id, name, metrics measured, report definition)
TRIALS = [
    ("TRIAL-CARDIO-01", "CARDIO-01 Blood Pressure Study", ["systolic_bp", "heart_rate", "weight"], CARDIO_DEFINITION),
    ("TRIAL-GLU-02", "GLU-02 Glucose Monitoring Study", ["glucose", "weight", "heart_rate"], GLU_DEFINITION),
]
# Participants' locales in turn: each language with a catalog, and some without one (Portuguese, Russian,
# Arabic, Greek) whose reports fall back to the trial's default language.
LOCALES = ["en", "de-DE", "ja-JP", "fr-FR", "es-ES", "pt-BR", "ru-RU", "ar-EG", "el-GR"]
# Diary notes in the participant's own language (and script).
DIARY_LINES = {
    "en": [
        "Slept well, walked 30 minutes after lunch.",
        "Felt a bit tired in the afternoon; skipped the evening walk.",
        "Took the morning dose with breakfast. Mild headache <b>before</b> noon & gone by 2pm.",
        "Busy day at work; ate late. Blood pressure reading felt rushed.",
        "Cycled to the market. Knee OK. Notes for the nurse: ask about dose timing?",
        "Weekend trip, measurements taken at the hotel <i>before</i> breakfast.",
    ],
    "de": [
        "Gut geschlafen, nach dem Mittagessen 30 Minuten spazieren gegangen.",
        "Am Nachmittag etwas müde; den Abendspaziergang ausgelassen.",
        "Morgendosis mit dem Frühstück genommen. Leichte Kopfschmerzen, um 14 Uhr weg.",
        "Viel Arbeit, spät gegessen. Die Blutdruckmessung war etwas hektisch.",
    ],
    "ja": [
        "よく眠れた。昼食後に30分散歩した。",
        "午後は少し疲れた。夜の散歩は休んだ。",
        "朝の薬を朝食と一緒に飲んだ。軽い頭痛があったが、午後2時には治った。",
        "仕事が忙しく、夕食が遅くなった。血圧の測定は慌ただしかった。",
    ],
    "fr": [
        "Bien dormi, marché 30 minutes après le déjeuner.",
        "Un peu fatigué l’après-midi ; pas de promenade le soir.",
        "Pris la dose du matin au petit-déjeuner. Léger mal de tête, passé vers 14 h.",
    ],
    "es": [
        "Dormí bien, caminé 30 minutos después de comer.",
        "Algo cansado por la tarde; no salí a caminar.",
        "Tomé la dosis de la mañana con el desayuno. Dolor de cabeza leve, se pasó a las 14 h.",
    ],
    "pt": [
        "Dormi bem, caminhei 30 minutos depois do almoço.",
        "Um pouco cansado à tarde; não fiz a caminhada da noite.",
        "Tomei a dose da manhã com o café. Dor de cabeça leve, passou às 14h.",
    ],
    "ru": [
        "Хорошо спал, гулял 30 минут после обеда.",
        "Днём немного устал, вечернюю прогулку пропустил.",
        "Утреннюю дозу принял с завтраком. Лёгкая головная боль, к двум часам прошла.",
    ],
    "ar": [
        "نمت جيدًا، ومشيت ٣٠ دقيقة بعد الغداء.",
        "شعرت ببعض التعب بعد الظهر؛ لم أمشِ في المساء.",
        "أخذت جرعة الصباح مع الفطور. صداع خفيف زال بحلول الثانية.",
    ],
    "el": [
        "Κοιμήθηκα καλά, περπάτησα 30 λεπτά μετά το μεσημεριανό.",
        "Λίγο κουρασμένος το απόγευμα· παρέλειψα τη βραδινή βόλτα.",
        "Πήρα την πρωινή δόση με το πρωινό. Ελαφρύς πονοκέφαλος, πέρασε ως τις 2.",
    ],
}
INSERT_BATCH = 100  # MongoDB-wire servers used locally slow down sharply with larger batches



def _insert_new(collection, docs: list[dict]) -> None:
    """Insert documents whose deterministic ids may already exist (re-seeding)."""
    for i in range(0, len(docs), INSERT_BATCH):
        try:
            collection.insert_many(docs[i:i + INSERT_BATCH], ordered=False)
        except BulkWriteError as error:
            if any(e.get("code") != 11000 for e in error.details.get("writeErrors", [])):
                raise


def logo_bytes(colour: tuple[int, int, int]) -> bytes:
    """A small PNG logo: a heart-ish mark and a bar, deterministic for a given colour."""
    image = Image.new("RGBA", (360, 120), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 20, 60, 70), fill=colour)
    draw.ellipse((50, 20, 100, 70), fill=colour)
    draw.polygon([(14, 56), (96, 56), (55, 108)], fill=colour)
    draw.rounded_rectangle((120, 40, 350, 80), radius=12, fill=(40, 60, 90, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@dataclass(frozen=True)
class SeedObject:
    """An object that is no participant file (a trial's logo): stored as one, but with no `files` record."""

    key: str
    content_type: str
    data: bytes
    recorded_at: datetime



def trial_objects(spec: "SeedSpec") -> list[SeedObject]:
    """The logos the seeded trials' report definitions name."""
    at = report_weeks(spec)[0].start_utc - timedelta(days=14)
    return [SeedObject(definition["logo"], "image/png", logo_bytes((200, 40, 60, 255)), at)
            for _, _, _, definition in TRIALS if definition.get("logo")]


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

    @property
    def key(self) -> str:
        return file_key(self.trial_id, self.participant_id, self.file_id, self.extension)

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
        trial_id, _, metrics, _ = TRIALS[n % len(TRIALS)]
        participant_id = f"P-{spec.rng_seed:02d}{n:06d}"
        locale = LOCALES[n % len(LOCALES)]
        diary_lines = DIARY_LINES[locale.split("-")[0]]
        enrollment = {
            "_id": f"enr-{trial_id}-{participant_id}",
            "trial_id": trial_id,
            "participant_id": participant_id,
            "email": f"participant{n + 1:05d}@example.org",
            "locale": locale,
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
                text = "\n".join(rng.sample(diary_lines, 2))
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
    _insert_new(db[mongo.TRIALS], [{"_id": t, "name": name, "metrics": metrics, "report_definition": definition}
                                   for t, name, metrics, definition in TRIALS])
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


def seed_objects(put: Callable[[SeedFile | SeedObject], None], spec: SeedSpec) -> int:
    """Hand every file of `spec` to `put`, after the trials' logos; the number of participant files."""
    for obj in trial_objects(spec):
        put(obj)
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
    for obj in trial_objects(spec):  # before the trials that name them
        upload(s3, bucket, encryption, obj)

    def upload_files(participant: SeedParticipant) -> None:
        for f in participant.files:
            upload(s3, bucket, encryption, f)

    return seed_documents(db, spec, progress, before_documents=upload_files)


def upload(s3, bucket: str, encryption: Encryption, obj: SeedFile | SeedObject) -> None:
    """Upload one seeded object as production uploads do: with its recorded-at metadata, skipped if unchanged."""
    put_if_changed(s3, bucket, obj.key, obj.data, obj.content_type, encryption, metadata=file_metadata(obj.recorded_at))


def upload_objects(s3, bucket: str, encryption: Encryption, spec: SeedSpec) -> int:
    """Upload every file of `spec` (`upload`): the S3 half of a seed whose documents are loaded elsewhere
    (`seed_documents`, in a MongoDB stand-in's own process); the number of participant files."""
    return seed_objects(lambda obj: upload(s3, bucket, encryption, obj), spec)

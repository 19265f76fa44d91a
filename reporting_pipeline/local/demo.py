"""`reporting-pipeline demo`: one full weekly cycle through the real Dagster definitions, on embedded services."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

from dagster import DagsterInstance, build_schedule_context, build_sensor_context

from reporting_pipeline.services import mongo
from reporting_pipeline.services.objectstore import sha256_hex
from reporting_pipeline.settings import Settings

from .embedded import embedded_services, patched_env
from .outbox import report_link
from .seed import SeedSpec, seed_documents

_IMPORTED = time.monotonic()


@dataclass
class CycleResult:
    """What one weekly cycle launched and how its runs ended."""

    week: str = ""
    report_runs: list = field(default_factory=list)
    delivery_runs: list = field(default_factory=list)

    @property
    def failed_runs(self) -> list[str]:
        return [r.run_id for r in self.report_runs + self.delivery_runs if not r.success]


def materialization_metadata(run, asset_name: str) -> dict:
    """The metadata a run recorded when it materialized `asset_name`, as plain values."""
    for event in run.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key.path[-1] == asset_name:
            return {k: v.value for k, v in materialization.metadata.items()}
    return {}


def _run_tags(request) -> dict:
    """The tags the daemon would put on a run launched for this request."""
    return {**request.tags, **({"dagster/run_key": request.run_key} if request.run_key else {})}


def run_weekly_cycle(defs, instance: DagsterInstance, now: datetime, progress=lambda msg: None,
                     sensor_cursor: str | None = None, log_level: str = "WARNING",
                     skip_schedule: bool = False) -> tuple[CycleResult, str | None]:
    """Evaluate the schedule at `now`, execute its runs, then let the delivery sensor launch delivery runs.

    Returns the result and the sensor cursor to carry into the next cycle.
    """
    result = CycleResult()
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    schedule = defs.resolve_schedule_def("weekly_reports_schedule")
    tick = schedule.evaluate_tick(build_schedule_context(
        instance=instance, scheduled_execution_time=now, repository_def=defs.get_repository_def()))
    report_job = defs.resolve_job_def("weekly_reports_job")
    for i, request in enumerate([] if skip_schedule else tick.run_requests or [], start=1):
        result.week = request.tags["report/week"]
        run = report_job.execute_in_process(instance=instance, partition_key=request.partition_key,
                                            tags=_run_tags(request), raise_on_error=False, run_config=run_config)
        result.report_runs.append(run)
        done = materialization_metadata(run, "report_pdfs")
        progress(f"[{i}/{len(tick.run_requests)}] reports week {request.tags['report/week']} "
                 f"shard {request.tags['report/shard']}: "
                 + (f"{done.get('rendered', 0)} rendered, {done.get('failed', 0)} failed" if run.success else "RUN FAILED"))

    sensor = defs.resolve_sensor_def("report_delivery_sensor")
    delivery_job = defs.resolve_job_def("report_delivery_job")
    while True:
        evaluation = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=sensor_cursor, definitions=defs))
        sensor_cursor = evaluation.cursor
        if not evaluation.run_requests:
            break
        for request in evaluation.run_requests:
            run = delivery_job.execute_in_process(instance=instance, partition_key=request.partition_key,
                                                  tags=_run_tags(request), raise_on_error=False, run_config=run_config)
            result.delivery_runs.append(run)
            done = materialization_metadata(run, "report_deliveries")
            progress(f"delivery week {request.tags['report/week']} shard {request.tags['report/shard']}: "
                     + (f"{done.get('sent', 0)} sent, {done.get('failed', 0)} failed" if run.success else "RUN FAILED"))
    return result, sensor_cursor


def download_link(url: str) -> bytes:
    """Fetch a pre-signed link with a plain HTTP GET, as a mail client would."""
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def process_seconds() -> float:
    """Seconds since this process started (its imports included: what someone running the demo waits for)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError, IndexError):  # not Linux: from this module's import on
        return time.monotonic() - _IMPORTED


DEMO_SHARDS = 2  # a partition grid of more than one shard, without a run per handful of subscribers


def run_demo(subscribers: int, out: Path, now: datetime | None = None, progress=print,
             shards: int | None = None) -> dict:
    from reporting_pipeline.defs.definitions import build_definitions

    now = now or datetime.now(UTC)
    if out.exists():
        shutil.rmtree(out)
    (out / "reports").mkdir(parents=True)
    settings = Settings.from_env()  # a bad REPORT_SHARDS or REPORT_TIMEZONE is named here
    shards = shards or (settings.shards if os.environ.get("REPORT_SHARDS") else DEMO_SHARDS)
    # The seed's files go into the S3 stand-in through its own request handling (as `reporting-pipeline dev`
    # loads them; test_seed checks that equals uploading them), its documents into MongoDB.
    spec = SeedSpec(subscribers, timezone=settings.timezone, now=now.isoformat())
    progress(f"seeding {subscribers} subscribers (MongoDB: mongomock; S3 and SMTP servers on loopback)")
    with tempfile.TemporaryDirectory(prefix="reporting-demo-") as work, \
            embedded_services(Path(work), outbox_folder=out / "outbox", seed=spec) as (env, outbox), \
            patched_env({"REPORT_SHARDS": str(shards)}):
        db = mongo.connect(env["MONGODB_URI"])["reporting"]
        seeded = seed_documents(db, spec)
        defs = build_definitions()
        with DagsterInstance.ephemeral() as instance:
            cycle, _ = run_weekly_cycle(defs, instance, now, progress)

        downloaded = 0
        reports = {r["s3_key"]: r for r in db[mongo.REPORTS].find({"week": cycle.week})}
        for message in outbox.messages:
            link = report_link(message)
            if not link:
                raise RuntimeError(f"email {message['Message-ID']} has no report link")
            key = unquote(urlparse(link).path).split("/", 2)[2]
            data = download_link(link)
            if sha256_hex(data) != reports[key]["sha256"]:
                raise RuntimeError(f"downloaded report {key} does not match its recorded sha256")
            (out / "reports" / f"{reports[key]['subscription_id']}.pdf").write_bytes(data)
            downloaded += 1
        summary = {
            "week": cycle.week,
            "subscribers": len(seeded.subscription_ids),
            "shards": len(cycle.report_runs),
            "reports_rendered": len(reports),
            "emails_sent": len(outbox.messages),
            "reports_downloaded": downloaded,
            "failures": db[mongo.DEAD_LETTERS].count_documents({"week": cycle.week, "status": "open"}),
            "items_left_out": db[mongo.DATA_ISSUES].count_documents({"week": cycle.week}),
            "failed_runs": cycle.failed_runs,
        }
    summary["seconds"] = round(process_seconds(), 1)  # the services stopped too
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    progress(f"week {summary['week']}: {summary['reports_rendered']} reports rendered, "
             f"{summary['emails_sent']} emails sent, {summary['failures']} failures -> {out}/ "
             f"({summary['seconds']} s)")
    return summary

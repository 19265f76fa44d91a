"""Nothing identifying in what the project logs or Dagster stores: a weekly cycle with failed deliveries and a
maintenance run with drift, scanned for the seeded participant ids and email addresses."""

import logging

from dagster import instance_for_test

from reporting_pipeline.local.demo import run_weekly_cycle
from reporting_pipeline.local.embedded import Outbox, SmtpServer
from reporting_pipeline.local.seed import seed
from reporting_pipeline.services import mongo

from .conftest import NOW


class RefusingOutbox(Outbox):
    """Accepts every message but the second, which it refuses for good (550): a logged delivery failure."""

    async def handle_DATA(self, server, session, envelope):
        self.seen = getattr(self, "seen", 0) + 1
        if self.seen == 2:
            return "550 5.1.1 mailbox unavailable"
        return await super().handle_DATA(server, session, envelope)


def test_no_participant_id_or_address_in_logs_or_dagsters_storage(pipeline, tmp_path, caplog):
    db = pipeline.db
    seeded = seed(db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=12, weeks=1, now=NOW)
    subscriptions = list(db[mongo.SUBSCRIPTIONS].find())
    db[mongo.SUBSCRIPTIONS].update_one({"_id": seeded.subscription_ids[0]}, {"$set": {"email": "not-an-address"}})
    # Drift for the maintenance run: a participant file lost from S3 (its key names the participant).
    lost = db[mongo.FILES].find_one()
    pipeline.s3.delete_object(Bucket=pipeline.bucket, Key=lost["s3_key"])
    home = tmp_path / "dagster"
    home.mkdir()
    caplog.set_level(logging.DEBUG)
    with SmtpServer(RefusingOutbox()) as smtp, instance_for_test(temp_dir=str(home)) as instance:
        definitions = pipeline.definitions(smtp_port=smtp.port)
        cycle, _ = run_weekly_cycle(definitions, instance, NOW, log_level="DEBUG")
        maintenance = definitions.resolve_job_def("maintenance_job").execute_in_process(instance=instance)
        failures = db[mongo.DEAD_LETTERS].count_documents({"stage": "deliver"})
        events = [f"{e.dagster_event or ''} {e.user_message or ''}" for run in instance.get_runs()
                  for e in instance.all_logs(run.run_id)]
    assert maintenance.success and failures == 2  # the invalid address and the refused message
    identifiers = [s["participant_id"] for s in subscriptions] + [s["email"] for s in subscriptions] + [
        "not-an-address", lost["s3_key"]]
    # The project's loggers and Dagster's (the SMTP stand-in's own log, aiosmtpd's, is the mail server's).
    logged = [f"{record.name}: {record.getMessage()}" for record in caplog.records
              if record.levelno >= logging.INFO and record.name.split(".")[0] in ("dagster", "reporting_pipeline")]
    logged += events
    stored = [(str(p), p.read_bytes()) for p in home.rglob("*") if p.is_file()]
    leaks = sorted({f"{needle!r} logged" for needle in identifiers for line in logged if needle in line}
                   | {f"{needle!r} in {where}" for needle in identifiers for where, data in stored
                      if needle.encode() in data})
    print(f"\nprivacy scan: {len(logged)} log lines and Dagster events of {len(cycle.report_runs)} report, "
          f"{len(cycle.delivery_runs)} delivery and 1 maintenance run, {len(stored)} stored files; "
          f"{len(identifiers)} identifiers looked for: {len(leaks)} found")
    assert leaks == [], [line for line in logged if any(n in line for n in identifiers)][:5]

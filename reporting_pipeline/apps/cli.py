"""Command line: `reporting-pipeline demo|dev|outbox|seed|subscriptions|trials|api|status|dead-letters|reconcile|retention`."""

from __future__ import annotations

import argparse
import os
import sys


def database(settings):
    """The configured MongoDB database."""
    from reporting_pipeline.services import mongo

    return mongo.connect(settings.mongodb_uri)[settings.mongodb_database]


def _dead_letters(args) -> int:
    from reporting_pipeline.operations.redrive import open_dead_letters, redrive_dead_letters, resolve_dead_letter

    db = database(args.settings)
    if args.action == "list":
        letters = open_dead_letters(db, week=args.week, status=None if args.status == "all" else args.status)
        print(f"{'id':26} {'week':10} {'subscription':24} {'stage':9} {'code':22} {'tries':>5} {'status':8} last seen")
        for d in letters:
            print(f"{str(d['_id']):26} {d['week']:10} {d['subscription_id']:24} {d['stage']:9} {d['code']:22} "
                  f"{d.get('attempts', 0):>5} {d['status']:8} {d.get('last_seen'):%Y-%m-%d %H:%M}")
        print(f"{len(letters)} dead letter(s)")
        return 0
    if args.action == "redrive":
        count, requests = redrive_dead_letters(db, args.settings.shards, week=args.week, letter_id=args.id)
        print(f"queued {len(requests)} redrive request(s) for {count} open dead letter(s); "
              "the redrive sensor launches the runs")
        return 0 if count or not args.id else 1
    if resolve_dead_letter(db, args.id, note=args.note or ""):
        print(f"resolved {args.id}")
        return 0
    print(f"no open dead letter with id {args.id}", file=sys.stderr)
    return 1


def storage(settings):
    """(S3 client, bucket, encryption) of the configured report store."""
    from reporting_pipeline.services.objectstore import Encryption, make_client

    s3 = make_client(settings.aws_endpoint_url, settings.aws_region)
    return s3, settings.reports_bucket, Encryption(settings.reports_sse, settings.reports_kms_key_id)


def _reconcile(args) -> int:
    from datetime import UTC, datetime, timedelta

    from reporting_pipeline.operations.reconcile import reconcile

    db = database(args.settings)
    s3, bucket, encryption = storage(args.settings)
    grace = args.grace_hours if args.grace_hours is not None else args.settings.orphan_grace_hours
    report = reconcile(db, s3, bucket, now=datetime.now(UTC), grace=timedelta(hours=grace),
                       repair=args.repair, page_size=args.page_size, encryption=encryption,
                       retention=timedelta(days=args.settings.retention_days))
    for name, value in report.as_metadata().items():
        print(f"{name:24} {value}")
    for kind, keys in report.samples.items():
        for key in keys[:10]:
            print(f"  {kind}: {key}")
    return 0 if report.clean else 1


def _retention(args) -> int:
    from datetime import UTC, datetime

    from reporting_pipeline.operations.retain import apply_lifecycle, sweep

    s3, bucket, _ = storage(args.settings)
    days = args.settings.retention_days
    if args.action == "apply-lifecycle":
        changed = apply_lifecycle(s3, bucket, days)
        print(f"lifecycle of {bucket}: reports expire after {days} days "
              f"({'updated' if changed else 'already in place'})")
        return 0
    result = sweep(database(args.settings), s3, bucket, now=datetime.now(UTC), days=days)
    print(" ".join(f"{k}={v}" for k, v in result.as_metadata().items()))
    return 0


def _subscriptions(args) -> int:
    from reporting_pipeline.stages import subscribe as subs

    db = database(args.settings)
    try:
        if args.action == "add":
            doc, created = subs.subscribe(db, args.trial, args.participant, timezone=args.timezone)
            print(f"{'created' if created else 'exists'} {doc['_id']} ({doc['status']})")
        elif args.action == "remove":
            doc = subs.unsubscribe(db, args.id, reason="staff")
            print(f"{doc['_id']} {doc['status']}")
        else:
            docs = subs.list_subscriptions(db, participant_id=args.participant, trial_id=args.trial, status=args.status)
            for d in docs:
                print(f"{d['_id']:24} {d['trial_id']:18} {d['participant_id']:12} {d['status']:13} "
                      f"{d.get('status_reason', '')}")
            print(f"{len(docs)} subscription(s)")
    except subs.SubscriptionError as error:
        print(f"refused ({error.code}): {error}", file=sys.stderr)
        return 1
    return 0


def load_definition_file(path: str):
    """A definition file's content (JSON or YAML), or raises ValueError saying why it cannot be read."""
    import yaml

    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the file: {error}") from None
    try:
        # YAML is a superset of JSON: one loader reads both.
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"not valid JSON or YAML: {str(error).splitlines()[0]}") from None


def _trials(args) -> int:
    """`trials validate FILE` checks a report definition; `trials put FILE` checks and stores it on its trial."""
    from reporting_pipeline.stages.definitions import validate_definition

    try:
        doc = load_definition_file(args.file)
    except ValueError as error:
        print(f"{args.file}: {error}", file=sys.stderr)
        return 1
    definition, errors = validate_definition(doc)
    for error in errors:
        print(f"{args.file}: {error}", file=sys.stderr)
    if errors:
        print(f"{args.file}: {len(errors)} problem(s); the definition is not valid", file=sys.stderr)
        return 1
    summary = (f"trial {definition.trial_id}, version {definition.version}, languages "
               f"{', '.join(sorted(definition.languages))}, {len(definition.metrics)} metric(s)")
    if args.action == "validate":
        print(f"{args.file}: valid report definition ({summary})")
        return 0
    return _put_definition(args, doc, definition, summary)


def _put_definition(args, doc: dict, definition, summary: str) -> int:
    from datetime import UTC, datetime

    from botocore.exceptions import ClientError

    from reporting_pipeline.services import mongo
    from reporting_pipeline.services.objectstore import is_not_found

    db = database(args.settings)
    trial = db[mongo.TRIALS].find_one({"_id": definition.trial_id}, {"report_definition": 1})
    if trial is None:
        print(f"{args.file}: no trial {definition.trial_id!r} in the trials collection", file=sys.stderr)
        return 1
    stored = trial.get("report_definition") or {}
    # Reports record the version that rendered them: one version must always mean one content.
    if str(stored.get("version")) == definition.version and stored != doc:
        print(f"{args.file}: version {definition.version} is stored already with other content; "
              "give the changed definition a new version", file=sys.stderr)
        return 1
    if definition.logo:
        s3, bucket, _ = storage(args.settings)
        try:
            s3.head_object(Bucket=bucket, Key=definition.logo)
        except ClientError as error:
            if not is_not_found(error):
                raise
            print(f"{args.file}: logo: no object at key {definition.logo} in bucket {bucket}", file=sys.stderr)
            return 1
    db[mongo.TRIALS].update_one({"_id": definition.trial_id}, {"$set": {
        "report_definition": doc, "report_definition_updated_at": datetime.now(UTC)}})
    print(f"stored report definition ({summary})")
    return 0


def _api(args) -> int:
    import uvicorn

    from .api import build_app

    uvicorn.run(build_app(args.settings, docs=args.settings.api_docs), host=args.host, port=args.port, log_level="info",
                access_log=False)  # access logs would record one-click unsubscribe tokens
    return 0


def _dagster_figures(week: str, shard_count: int) -> tuple[dict, int | None, int | None]:
    """Latest report run per shard partition, queued runs and recent failures, if DAGSTER_HOME is set."""
    if not os.environ.get("DAGSTER_HOME"):
        return {}, None, None
    from datetime import UTC, datetime, timedelta

    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    from reporting_pipeline.defs.runs import REPORTS, latest_run, run_kind
    from reporting_pipeline.sharding import shard_ids

    states = {}
    with DagsterInstance.get() as instance:
        for shard in shard_ids(shard_count):
            # Whatever launched it: the schedule, a sensor, the CLI, or a UI materialization or backfill.
            record = latest_run(instance, f"{shard}|{week}", REPORTS)
            states[shard] = (f"{record.dagster_run.status.value.lower()} ({record.dagster_run.job_name})"
                             if record else "not run")
        queued = instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.QUEUED]))
        # Failed report and delivery runs only, however launched: a failed maintenance run is no missing report.
        recent_failures = instance.get_run_records(RunsFilter(
            statuses=[DagsterRunStatus.FAILURE], updated_after=datetime.now(UTC) - timedelta(days=1)), limit=10_000)
        failed = sum(1 for record in recent_failures if run_kind(record.dagster_run) is not None)
    return states, queued, failed


def _status(args) -> int:
    from datetime import UTC, datetime, timedelta

    from reporting_pipeline.operations.status import dead_links, delivery_latencies, prometheus_text, week_status
    from reporting_pipeline.weeks import Week, last_complete_week

    settings = args.settings
    db = database(settings)
    now = datetime.now(UTC)
    week = args.week or last_complete_week(now, settings.timezone).key
    Week.from_key(week, settings.timezone)
    s3, bucket, _ = storage(settings)
    links = dead_links(db, s3, bucket, week, links_since=now - timedelta(hours=settings.link_ttl_hours))
    rows = week_status(db, week, settings.shards, links)
    states, queued, failed = _dagster_figures(week, settings.shards)
    for row in rows:
        row.partition = states.get(row.shard, "unknown")
    if args.prometheus:
        print(prometheus_text(rows, week, delivery_latencies(db, week), queued, failed), end="")
    else:
        print(f"week {week}")
        print(f"{'shard':6} {'subscribers':>11} {'rendered':>9} {'delivered':>10} {'held':>5} {'dead letters':>13}"
              f" {'dead links':>11}  latest report run")
        for r in rows:
            print(f"{r.shard:6} {r.subscribers:>11} {r.rendered:>9} {r.delivered:>10} {r.held:>5} {r.dead_letters:>13}"
                  f" {r.dead_links:>11}  {r.partition}")
        fields = ("subscribers", "rendered", "delivered", "held", "dead_letters", "dead_links")
        total = [sum(getattr(r, f) for r in rows) for f in fields]
        print(f"{'total':6} {total[0]:>11} {total[1]:>9} {total[2]:>10} {total[3]:>5} {total[4]:>13} {total[5]:>11}")
        print("complete" if all(r.complete for r in rows) else "INCOMPLETE")
    return 0 if all(r.complete for r in rows) else 1


# The local tooling's commands (the `local` extra): parsed and run by reporting_pipeline.local.commands,
# which production never imports.
LOCAL_COMMANDS = {
    "dev": "run Dagster (UI, daemon) with local MongoDB, S3 and SMTP stand-ins",
    "outbox": "list the emails the dev stack's SMTP sink saved",
    "demo": "run one weekly cycle on embedded services and write the results",
    "seed": "create synthetic trials, subscriptions, records and files",
}


def settings_from_env():
    """The settings, or None after printing the one-line error that names the variable."""
    from reporting_pipeline.settings import Settings, SettingsError

    try:
        return Settings.from_env()
    except SettingsError as error:
        print(f"reporting-pipeline: {error}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Nothing leaves the machine: Dagster's telemetry uploader runs unless this variable is set.
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
    if argv and argv[0] in LOCAL_COMMANDS:
        from reporting_pipeline.local.commands import main as local_main

        return local_main(argv)
    parser = argparse.ArgumentParser(prog="reporting-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("dead-letters", help="list, redrive or resolve per-subscriber failures")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("list", help="show dead letters")
    a.add_argument("--week")
    a.add_argument("--status", choices=["open", "resolved", "all"], default="open")
    a = actions.add_parser("redrive", help="queue re-runs of what is not done yet")
    a.add_argument("--week")
    a.add_argument("--id")
    a = actions.add_parser("resolve", help="close a dead letter by hand")
    a.add_argument("id")
    a.add_argument("--note")
    p.set_defaults(func=_dead_letters)
    p = sub.add_parser("reconcile", help="compare S3 objects with MongoDB metadata (exit 1 if drift is left)")
    p.add_argument("--repair", action="store_true", help="re-register or delete orphans, queue re-renders")
    p.add_argument("--grace-hours", type=float, help="default: REPORT_ORPHAN_GRACE_HOURS (24)")
    p.add_argument("--page-size", type=int, default=1000)
    p.set_defaults(func=_reconcile)
    p = sub.add_parser("retention", help="S3 lifecycle rule and the sweeper for stores without one")
    p.add_argument("action", choices=["apply-lifecycle", "sweep"])
    p.set_defaults(func=_retention)
    p = sub.add_parser("subscriptions", help="staff: add, list or remove subscriptions")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("add")
    a.add_argument("--trial", required=True)
    a.add_argument("--participant", required=True)
    a.add_argument("--timezone")
    a = actions.add_parser("list")
    a.add_argument("--trial")
    a.add_argument("--participant")
    a.add_argument("--status")
    a = actions.add_parser("remove")
    a.add_argument("id")
    p.set_defaults(func=_subscriptions)
    p = sub.add_parser("trials", help="check or store a trial's report definition (JSON or YAML)")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("validate", help="print each problem with its field path; exit 1 if there is one")
    a.add_argument("file")
    a.set_defaults(needs_settings=False)  # a check of a file: no database, no environment
    a = actions.add_parser("put", help="validate, then store it on its trial's document")
    a.add_argument("file")
    p.set_defaults(func=_trials)
    p = sub.add_parser("api", help="serve the subscription API (JWT_SECRET or JWT_PUBLIC_KEY required)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=_api)
    p = sub.add_parser("status", help="per-shard state of a report week; exit 1 while it is incomplete")
    p.add_argument("--week", help="Monday of the week (YYYY-MM-DD); default: the last complete week")
    p.add_argument("--prometheus", action="store_true", help="print Prometheus text-format metrics instead")
    p.set_defaults(func=_status)
    for name, help_text in LOCAL_COMMANDS.items():
        sub.add_parser(name, help=help_text)  # listed here; `reporting-pipeline NAME --help` tells the rest
    args = parser.parse_args(argv)
    if getattr(args, "needs_settings", True):
        args.settings = settings_from_env()
        if args.settings is None:
            return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""Command line: `reporting-pipeline seed|demo`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _seed(args) -> int:
    from . import settings
    from .objectstore import Encryption, ensure_bucket, make_client
    from .seed import seed

    db = _database()
    if db is None:
        return 2
    bucket = os.environ.get("REPORTS_BUCKET", "clinical-reports")
    s3 = make_client(os.environ.get("AWS_ENDPOINT_URL"))
    if os.environ.get("AWS_ENDPOINT_URL"):
        ensure_bucket(s3, bucket)
    result = seed(db, s3, bucket, Encryption(os.environ.get("REPORTS_SSE", "AES256"), os.environ.get("REPORTS_KMS_KEY_ID")),
                  subscribers=args.subscribers, weeks=args.weeks, timezone=settings.report_timezone(),
                  rng_seed=args.seed, progress=lambda n, total: print(f"seeded {n}/{total}"))
    print(f"seeded {len(result.subscription_ids)} subscriptions, {result.records} records, {result.files} files "
          f"for weeks {', '.join(result.weeks)}")
    return 0


def _database():
    from . import mongo

    uri = os.environ.get("MONGODB_URI")
    if not uri:
        print("MONGODB_URI is not set", file=sys.stderr)
        return None
    return mongo.connect(uri)[os.environ.get("MONGODB_DATABASE", "reporting")]


def _dead_letters(args) -> int:
    from . import settings
    from .redrive import open_dead_letters, redrive_dead_letters, resolve_dead_letter

    db = _database()
    if db is None:
        return 2
    if args.action == "list":
        letters = open_dead_letters(db, week=args.week, status=None if args.status == "all" else args.status)
        print(f"{'id':26} {'week':10} {'subscription':24} {'stage':9} {'code':22} {'tries':>5} {'status':8} last seen")
        for d in letters:
            print(f"{str(d['_id']):26} {d['week']:10} {d['subscription_id']:24} {d['stage']:9} {d['code']:22} "
                  f"{d.get('attempts', 0):>5} {d['status']:8} {d.get('last_seen'):%Y-%m-%d %H:%M}")
        print(f"{len(letters)} dead letter(s)")
        return 0
    if args.action == "redrive":
        count, requests = redrive_dead_letters(db, settings.shard_count(), week=args.week, letter_id=args.id)
        print(f"queued {len(requests)} redrive request(s) for {count} open dead letter(s); "
              "the redrive sensor launches the runs")
        return 0 if count or not args.id else 1
    if resolve_dead_letter(db, args.id, note=args.note or ""):
        print(f"resolved {args.id}")
        return 0
    print(f"no open dead letter with id {args.id}", file=sys.stderr)
    return 1


def _demo(args) -> int:
    from .demo import run_demo

    summary = run_demo(args.subscribers, Path(args.out))
    return 0 if summary["emails_sent"] == summary["subscribers"] and not summary["failed_runs"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reporting-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("seed", help="create synthetic trials, subscriptions, records and files")
    p.add_argument("--subscribers", type=int, default=24)
    p.add_argument("--weeks", type=int, default=3)
    p.add_argument("--seed", type=int, default=7, help="random seed; the same seed creates the same data")
    p.set_defaults(func=_seed)
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
    p = sub.add_parser("demo", help="run one weekly cycle on embedded services and write the results")
    p.add_argument("--subscribers", type=int, default=24)
    p.add_argument("--out", default="demo-output")
    p.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    if getattr(args, "subscribers", 1) < 1:
        parser.error("--subscribers must be at least 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

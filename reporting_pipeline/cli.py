"""Command line: `reporting-pipeline seed|demo`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _seed(args) -> int:
    import os

    from . import mongo, settings
    from .objectstore import Encryption, ensure_bucket, make_client
    from .seed import seed

    uri = os.environ.get("MONGODB_URI")
    if not uri:
        print("MONGODB_URI is not set", file=sys.stderr)
        return 2
    bucket = os.environ.get("REPORTS_BUCKET", "clinical-reports")
    s3 = make_client(os.environ.get("AWS_ENDPOINT_URL"))
    if os.environ.get("AWS_ENDPOINT_URL"):
        ensure_bucket(s3, bucket)
    db = mongo.connect(uri)[os.environ.get("MONGODB_DATABASE", "reporting")]
    result = seed(db, s3, bucket, Encryption(os.environ.get("REPORTS_SSE", "AES256"), os.environ.get("REPORTS_KMS_KEY_ID")),
                  subscribers=args.subscribers, weeks=args.weeks, timezone=settings.report_timezone(),
                  rng_seed=args.seed, progress=lambda n, total: print(f"seeded {n}/{total}"))
    print(f"seeded {len(result.subscription_ids)} subscriptions, {result.records} records, {result.files} files "
          f"for weeks {', '.join(result.weeks)}")
    return 0


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

"""`reporting-pipeline dev|outbox|demo|seed`: the local tooling's commands (the `local` extra).

`reporting_pipeline.apps.cli` hands these commands here, so a production install never imports them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from reporting_pipeline.apps.cli import LOCAL_COMMANDS, database, settings_from_env, storage


def _seed(args) -> int:
    from reporting_pipeline.services.objectstore import ensure_bucket

    from .seed import seed

    db = database(args.settings)
    s3, bucket, encryption = storage(args.settings)
    if args.settings.aws_endpoint_url:
        ensure_bucket(s3, bucket)
    result = seed(db, s3, bucket, encryption,
                  subscribers=args.subscribers, weeks=args.weeks, timezone=args.settings.timezone,
                  rng_seed=args.seed, progress=lambda n, total: print(f"seeded {n}/{total}"))
    print(f"seeded {len(result.subscription_ids)} subscriptions, {result.records} records, {result.files} files "
          f"for weeks {', '.join(result.weeks)}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    summary = run_demo(args.subscribers, Path(args.out), shards=args.shards)
    code = 0 if summary["emails_sent"] == summary["subscribers"] and not summary["failed_runs"] else 1
    # Everything is written and closed. Tearing the interpreter down would only free what it holds (the fonts
    # and locale data rendering loaded, Dagster's modules): two more seconds of the demo's wall time.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _dev(args) -> int:
    from .dev import dev_main

    return dev_main(args)


def _outbox(args) -> int:
    from .outbox import outbox_main

    return outbox_main(args)


def main(argv: list[str]) -> int:
    # The stand-ins' modules import only the standard library at the top, so building this parser works
    # without the `local` extra; `dev` then says what to install.
    from .dev import add_dev_arguments
    from .outbox import add_outbox_arguments

    parser = argparse.ArgumentParser(prog="reporting-pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("seed", help=LOCAL_COMMANDS["seed"])
    p.add_argument("--subscribers", type=int, default=24)
    p.add_argument("--weeks", type=int, default=3)
    p.add_argument("--seed", type=int, default=7, help="random seed; the same seed creates the same data")
    p.set_defaults(func=_seed)
    p = sub.add_parser("dev", help=LOCAL_COMMANDS["dev"])
    add_dev_arguments(p)
    p.set_defaults(func=_dev)
    p = sub.add_parser("outbox", help=LOCAL_COMMANDS["outbox"])
    add_outbox_arguments(p)
    p.set_defaults(func=_outbox)
    p = sub.add_parser("demo", help=LOCAL_COMMANDS["demo"])
    p.add_argument("--subscribers", type=int, default=24)
    p.add_argument("--out", default="demo-output")
    p.add_argument("--shards", type=int, default=None,
                   help="shards per week (default: REPORT_SHARDS if set, else 2)")
    p.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    if getattr(args, "subscribers", 1) < 1:
        parser.error("--subscribers must be at least 1")
    if (getattr(args, "shards", None) or 1) < 1:
        parser.error("--shards must be at least 1")
    if args.func is _seed:  # the others set up their own environment
        args.settings = settings_from_env()
        if args.settings is None:
            return 2
    return args.func(args)

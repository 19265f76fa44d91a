"""How long `reporting-pipeline dev` takes to come up with a realistic amount of data.

    python benchmarks/dev_stack.py [--subscribers 1000] [--weeks 4] [--rounds 1]

Starts the stack on free ports with a fresh home, as a data engineer would, and prints the seconds
until the stand-ins have loaded the seed and until the UI has loaded the code location; then stops
it. Writes the figures under "dev_stack" in benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Whatever the shell points at elsewhere would replace a stand-in.
FOREIGN_ENV = ("MONGODB_URI", "AWS_ENDPOINT_URL", "SMTP_HOST", "DAGSTER_HOME", "REPORTS_BUCKET", "REPORT_FIRST_WEEK")


def one_start(subscribers: int, weeks: int) -> dict:
    from reporting_pipeline.local.embedded import free_port

    with tempfile.TemporaryDirectory(prefix="dev-stack-bench-") as work:
        ports = [str(free_port()) for _ in range(4)]
        argv = [sys.executable, "-m", "reporting_pipeline.local.dev", "--home", str(Path(work) / "home"),
                "--subscribers", str(subscribers), "--weeks", str(weeks), "--ui-port", ports[0],
                "--mongo-port", ports[1], "--s3-port", ports[2], "--smtp-port", ports[3]]
        env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
        started = time.monotonic()
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        figures = {}
        try:
            for line in process.stdout:
                if "[dev] demo data:" in line:
                    figures["seed_loaded_s"] = round(time.monotonic() - started, 1)
                if line.startswith("Dagster UI: "):
                    figures["ui_up_s"] = round(time.monotonic() - started, 1)
                    break
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(120)
        if "ui_up_s" not in figures:
            raise SystemExit(f"the dev stack did not come up (exit {process.returncode})")
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--weeks", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rounds = [one_start(args.subscribers, args.weeks) for _ in range(args.rounds)]
    median = sorted(rounds, key=lambda r: r["ui_up_s"])[len(rounds) // 2]
    result = {"subscribers": args.subscribers, "weeks": args.weeks, **median, "rounds": rounds,
              "measured": datetime.now(UTC).strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
              "python": platform.python_version()}
    print(f"dev stack, {args.subscribers} subscribers x {args.weeks} weeks: seed loaded after "
          f"{median['seed_loaded_s']} s, UI up after {median['ui_up_s']} s (median of {len(rounds)})")
    target = HERE / "results.json"
    results = json.loads(target.read_text()) if target.exists() else {}
    results["dev_stack"] = result
    target.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""`reporting-pipeline dev`: `dagster dev` with local MongoDB, S3 and SMTP stand-ins, started and stopped together.

A stand-in starts only when its variable is unset: MONGODB_URI (mongoeco's wire server, in memory),
AWS_ENDPOINT_URL (moto's S3 server), SMTP_HOST (a sink saving .eml files). Every child runs in its
own session; Ctrl-C, SIGTERM or SIGHUP stops them all, and whatever they left behind, before exiting.
`python -m reporting_pipeline.local.dev` is the same command.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .outbox import DEFAULT_HOME

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = ROOT / "workspace.yaml"
INSTANCE_HEADER = "# Written by `reporting-pipeline dev` on every start; delete this line to keep your own edits."
INSTANCE_YAML = INSTANCE_HEADER + """
# The local instance: SQLite, runs as local processes. Not the production dagster.yaml at the repository root.
storage:
  sqlite:
    base_dir: {storage}
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 4
    dequeue_interval_seconds: 2
run_launcher:
  module: dagster.core.launcher
  class: DefaultRunLauncher
run_retries:
  enabled: true
  max_retries: 2
  retry_on_asset_or_op_failure: false
telemetry:
  enabled: false
nux:
  enabled: false  # no sign-up dialog in the UI
"""
LOCATION_QUERY = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_CHILD_PIDS: set[int] = set()  # reaped by their Popen objects, not by _reap_orphans
STANDIN_START_SECONDS = 30
SEED_SECONDS_PER_SUBSCRIBER_WEEK = 0.1  # patience for loading the seed; it takes under a tenth of that


class StartError(RuntimeError):
    """A part of the stack could not start; the message says which and where its log is."""


class _Stop(BaseException):
    """Raised by the signal handler, so a blocking wait anywhere ends in the shutdown path."""


def tcp_port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port")
    return port


def add_dev_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", default=DEFAULT_HOME,
                        help="DAGSTER_HOME of the local instance, with logs, step outputs and the outbox "
                             "(default %(default)s)")
    parser.add_argument("--outbox", help="folder where the SMTP sink saves messages (default HOME/outbox)")
    parser.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default %(default)s)")
    parser.add_argument("--ui-port", type=tcp_port, default=3000)
    parser.add_argument("--mongo-port", type=tcp_port, default=27017, help="when MONGODB_URI is unset")
    parser.add_argument("--s3-port", type=tcp_port, default=9000, help="when AWS_ENDPOINT_URL is unset")
    parser.add_argument("--smtp-port", type=tcp_port, default=1025, help="when SMTP_HOST is unset")
    parser.add_argument("--subscribers", type=int, default=24, help="demo subscribers to seed")
    parser.add_argument("--weeks", type=int, default=3, help="complete weeks of demo data to seed")
    parser.add_argument("--no-seed", action="store_true", help="never seed demo data")
    parser.add_argument("--startup-timeout", type=float, default=240.0, help="seconds to wait for the UI")


# --- processes ------------------------------------------------------------------------------------

def _die_with_parent() -> None:
    # Runs in the child before exec: should this process be SIGKILLed, its children still get a SIGTERM.
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) of every process, from /proc (empty where there is none)."""
    table = {}
    if not os.path.isdir("/proc"):
        return table
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def _descendants(root: int, table: dict) -> set[int]:
    found, frontier = set(), [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, _) in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return found


def _reap_orphans() -> dict:
    """Collect exited orphans handed to us as subreaper (our own children are reaped by Popen); the table."""
    me, table = os.getpid(), _proc_table()
    for pid, (ppid, _, state) in table.items():
        if ppid == me and state == "Z" and pid not in _CHILD_PIDS:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
    return table


def _kill_all(select_pids, grace: float, patience: float = 0) -> None:
    """Stop what `select_pids(table)` picks: `patience` s to exit alone, then SIGTERM, SIGKILL after `grace` s."""
    for sig, wait in ((None, patience), (signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        deadline, sent = time.monotonic() + wait, set()
        while True:
            table = _reap_orphans()
            live = {pid for pid in select_pids(table) if pid in table and table[pid][2] != "Z"}
            if not live:
                return
            for pid in live - sent if sig else ():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
                sent.add(pid)
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)


class Child:
    """One child process in a session of its own, its output appended to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict, log: Path | None, cwd: Path | None = None,
                 ready_line: bool = False):
        self.name, self.log = name, log
        out = open(log, "ab") if log else None  # no log: output goes to our terminal
        try:
            self.process = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if ready_line else out,
                stderr=out, text=ready_line, start_new_session=True,
                preexec_fn=_die_with_parent if _LIBC else None,
            )
        finally:
            if out:
                out.close()
        _CHILD_PIDS.add(self.process.pid)

    def wait_ready_line(self, timeout: float) -> int:
        """The port from the child's `READY <host> <port>` line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.process.stdout], [], [], 0.2)[0]:
                words = self.process.stdout.readline().split()
                if len(words) == 3 and words[0] == "READY":
                    return int(words[2])
                if not words:
                    break  # end of output: it exited
        raise StartError(f"{self.name} did not start; see {self.log}")

    def exited(self) -> str:
        return f"{self.name} exited with code {self.process.returncode}" + (f"; see {self.log}" if self.log else "")

    def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after `grace` s; then the same for anything left in its process group."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        group = self.process.pid  # start_new_session: the group id is the leader's pid
        # Its children were told to stop by it; only stragglers get signals.
        _kill_all(lambda table: [pid for pid, (_, pgrp, _) in table.items() if pgrp == group], grace=5, patience=10)


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _wait_for_ui(url: str, dagster: Child, timeout: float) -> list[str]:
    """Wait until the webserver answers and the code location has loaded; its load errors, if any."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dagster.process.poll() is not None:
            raise StartError(f"dagster dev exited with code {dagster.process.returncode}; see its output above")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                pass
            request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": LOCATION_QUERY}).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                entries = json.load(response)["data"]["workspaceOrError"].get("locationEntries") or []
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                return [f"{e['name']}: {e['locationOrLoadError']['message']}" for e in entries
                        if e["locationOrLoadError"]["__typename"] == "PythonError"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.5)
    raise StartError(f"the Dagster UI did not answer at {url} within {timeout:.0f} s")


# --- the stack ------------------------------------------------------------------------------------

def _say(message: str) -> None:
    print(f"[dev] {message}", flush=True)


def _seed_spec(args, env: dict, embedded_mongo: bool, now: datetime):
    """What to seed, or None: never seed into an external database that has data (MONGODB_URI may point
    at a shared server)."""
    from .seed import SeedSpec

    if args.no_seed:
        return None
    if not embedded_mongo:
        from reporting_pipeline.services import mongo

        client = mongo.connect(env["MONGODB_URI"])
        try:
            if client[env.get("MONGODB_DATABASE", "reporting")][mongo.SUBSCRIPTIONS].estimated_document_count():
                _say("demo data: the database has data, not seeded")
                return None
        finally:
            client.close()  # its monitor threads must be gone before the next fork
    return SeedSpec(args.subscribers, args.weeks, env.get("REPORT_TIMEZONE") or "UTC", now.isoformat())


def _seed_external(spec, env: dict, embedded_mongo: bool, embedded_s3: bool) -> None:
    """The halves of the seed that go to services we did not start: over the network, files first."""
    from reporting_pipeline.services import mongo
    from reporting_pipeline.services.objectstore import Encryption, ensure_bucket, make_client

    from .seed import seed_documents, upload_objects

    if not embedded_s3:
        s3 = make_client(env.get("AWS_ENDPOINT_URL") or None)
        encryption = Encryption(env.get("REPORTS_SSE", "AES256"), env.get("REPORTS_KMS_KEY_ID"))
        if env.get("AWS_ENDPOINT_URL"):
            ensure_bucket(s3, env["REPORTS_BUCKET"])  # as `reporting-pipeline seed` does
        upload_objects(s3, env["REPORTS_BUCKET"], encryption, spec)
    if not embedded_mongo:
        client = mongo.connect(env["MONGODB_URI"])
        try:
            seed_documents(client[env.get("MONGODB_DATABASE", "reporting")], spec)
        finally:
            client.close()


def _write_instance_yaml(home: Path) -> Path:
    path = home / "dagster.yaml"
    if not path.exists() or path.read_text().startswith(INSTANCE_HEADER):
        path.write_text(INSTANCE_YAML.format(storage=json.dumps(str(home / "storage"))))
    return path


def _first_week(weeks: int, timezone: str, now: datetime) -> str:
    from reporting_pipeline.weeks import last_complete_week

    return (last_complete_week(now, timezone).monday - timedelta(days=7 * (weeks - 1))).isoformat()


def _environment(args, home: Path, ui_url: str, embedded_mongo: bool, embedded_s3: bool, embedded_smtp: bool,
                 now: datetime) -> dict:
    """Our environment, pointed at the stand-ins and the local instance; every child gets it."""
    # DAGSTER_DISABLE_TELEMETRY: the only switch that stops the webserver's and daemon's telemetry
    # uploader (the instance's `telemetry: enabled: false` does not).
    env = dict(os.environ, DAGSTER_HOME=str(home), PYTHONUNBUFFERED="1", DAGSTER_DISABLE_TELEMETRY="true")
    env.setdefault("REPORTS_BUCKET", "clinical-reports")
    env.setdefault("DAGSTER_UI_URL", ui_url)
    env.setdefault("EMAIL_FROM", "reports@trial-reports.example.org")
    env.setdefault("REPORT_SENSOR_INTERVAL_SECONDS", "5")  # a developer waits for the emails of a run they started
    if embedded_mongo:
        env["MONGODB_URI"] = f"mongodb://127.0.0.1:{args.mongo_port}/?directConnection=true"
        if not args.no_seed:  # partitions start at the first seeded week, not in 2025
            env.setdefault("REPORT_FIRST_WEEK", _first_week(args.weeks, env.get("REPORT_TIMEZONE") or "UTC", now))
    if embedded_s3:
        env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{args.s3_port}", AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing", AWS_REGION=env.get("AWS_REGION") or "us-east-1")
        env.pop("AWS_SESSION_TOKEN", None)
        env.pop("AWS_PROFILE", None)
    if embedded_smtp:
        env.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(args.smtp_port))
        for name in ("SMTP_USERNAME", "SMTP_PASSWORD", "SMTP_STARTTLS"):
            env.pop(name, None)  # the sink takes no login
        env.setdefault("OPS_EMAIL", "ops@trial-reports.example.org")  # alerts land in the outbox too
    return env


def dev_main(args) -> int:
    """Start the stack, print the UI URL once healthy, and stop everything on Ctrl-C or SIGTERM."""
    if args.subscribers < 1 or args.weeks < 1:
        print("--subscribers and --weeks must be at least 1", file=sys.stderr)
        return 2
    if os.environ.get("MONGODB_URI", "").startswith("mongomock://"):
        print("MONGODB_URI=mongomock://... lives in one process and cannot be shared with Dagster's processes; "
              "unset it to get a local MongoDB-wire server", file=sys.stderr)
        return 2
    embedded_mongo = not os.environ.get("MONGODB_URI")
    embedded_s3 = not os.environ.get("AWS_ENDPOINT_URL")
    embedded_smtp = not os.environ.get("SMTP_HOST")
    # The stand-ins come with the `local` extra; mongoeco only on Python >= 3.13.
    missing = [package for package, wanted in (("mongoeco", embedded_mongo), ("moto", embedded_s3),
                                              ("aiosmtpd", embedded_smtp))
               if wanted and importlib.util.find_spec(package) is None]
    if missing:
        print(f"reporting-pipeline dev: {', '.join(missing)} not installed: pip install -e '.[local]' "
              "(mongoeco needs Python >= 3.13; or point MONGODB_URI at a MongoDB)", file=sys.stderr)
        return 2
    wanted = [("Dagster UI", "--ui-port", args.host, args.ui_port)]
    wanted += [("MongoDB", "--mongo-port", "127.0.0.1", args.mongo_port)] if embedded_mongo else []
    wanted += [("S3", "--s3-port", "127.0.0.1", args.s3_port)] if embedded_s3 else []
    wanted += [("SMTP", "--smtp-port", "127.0.0.1", args.smtp_port)] if embedded_smtp else []
    problems = [f"port {port} for {name} is already in use; choose another with {option}"
                for name, option, host, port in wanted if _port_taken(host, port)]
    ports = [port for *_, port in wanted]
    problems += [f"port {p} is given to more than one service" for p in sorted(set(ports)) if ports.count(p) > 1]
    if problems:
        for problem in problems:
            print(f"reporting-pipeline dev: {problem}", file=sys.stderr)
        return 1

    home = Path(args.home).resolve()
    outbox = Path(args.outbox).resolve() if args.outbox else home / "outbox"
    # Not DAGSTER_HOME/logs: Dagster's telemetry uploader sends whatever is in that folder, and the S3
    # stand-in's request log names objects (trial and participant ids).
    logs = home / "service-logs"
    for folder in (home, outbox, logs):
        folder.mkdir(parents=True, exist_ok=True)
    ui_url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::', '') else args.host}:{args.ui_port}"
    now = datetime.now(UTC)  # the seed's weeks and the first partition agree, even across a Monday midnight
    env = _environment(args, home, ui_url, embedded_mongo, embedded_s3, embedded_smtp, now)
    os.environ.update(env)  # seeding here reads the same settings as the children

    if _LIBC is not None:
        # Orphans of our children (a run worker whose code server died) become ours, so we can stop them too.
        _LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    children: list[Child] = []

    def on_signal(signum, frame):
        raise _Stop(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    code = 0
    try:
        # The stand-ins load the seed into their own storage while they start, side by side; each says
        # READY once loaded. Loading 1,000 subscribers x 4 weeks takes about 45 s on 2 cores.
        spec = _seed_spec(args, env, embedded_mongo, now)
        started = time.monotonic()
        ready = []
        if embedded_mongo:
            mongo = Child("MongoDB (mongoeco)", [sys.executable, "-m", "reporting_pipeline.local.wire_mongo",
                                                 "--port", str(args.mongo_port),
                                                 "--database", env.get("MONGODB_DATABASE", "reporting"),
                                                 *(["--seed", spec.to_json()] if spec else [])],
                          env, logs / "mongo.log", ready_line=True)
            children.append(mongo)
            ready.append((mongo, f"MongoDB  {env['MONGODB_URI']}  (mongoeco, in memory; log {logs / 'mongo.log'})"))
        if embedded_s3:
            s3 = Child("S3 (moto)", [sys.executable, "-m", "reporting_pipeline.local.embedded", "s3",
                                     "--port", str(args.s3_port), "--bucket", env["REPORTS_BUCKET"],
                                     "--sse", env.get("REPORTS_SSE") or "AES256",
                                     *(["--kms-key-id", env["REPORTS_KMS_KEY_ID"]] if env.get("REPORTS_KMS_KEY_ID")
                                       else []),
                                     *(["--seed", spec.to_json()] if spec else [])],
                       env, logs / "s3.log", ready_line=True)
            children.append(s3)
            ready.append((s3, f"S3       {env['AWS_ENDPOINT_URL']}  bucket {env['REPORTS_BUCKET']}, default "
                              f"encryption {env.get('REPORTS_SSE') or 'AES256'}  (moto, in memory; log {logs / 's3.log'})"))
        if embedded_smtp:
            smtp = Child("SMTP sink", [sys.executable, "-m", "reporting_pipeline.local.outbox", "serve",
                                       "--port", str(args.smtp_port), "--folder", str(outbox)], env, logs / "smtp.log",
                         ready_line=True)
            children.append(smtp)
            ready.append((smtp, f"SMTP     127.0.0.1:{args.smtp_port} -> {outbox}/*.eml  "
                                "(list them: reporting-pipeline outbox)"))
        for child, line in ready:
            child.wait_ready_line(STANDIN_START_SECONDS + (SEED_SECONDS_PER_SUBSCRIBER_WEEK * args.subscribers
                                                           * args.weeks if spec else 0))
            _say(line)
        if spec:
            from .seed import report_weeks

            _seed_external(spec, env, embedded_mongo, embedded_s3)
            _say(f"demo data: {spec.subscribers} subscribers, {spec.weeks} weeks "
                 f"({', '.join(w.key for w in report_weeks(spec))}) in {time.monotonic() - started:.0f} s")

        instance = _write_instance_yaml(home)
        _say(f"instance {instance} (the repository's dagster.yaml is production's and is not used here)")
        workspace = ["-w", str(WORKSPACE)] if WORKSPACE.exists() else \
            ["-m", "reporting_pipeline.defs.definitions", "-a", "defs"]
        dagster = Child("dagster dev", [sys.executable, "-m", "dagster", "dev", *workspace,
                                        "--host", args.host, "--port", str(args.ui_port)],
                        # Its advice to use `dg dev` does not apply: dg is not part of this project.
                        dict(env, PYTHONWARNINGS="ignore:Function `dev_command` is superseded"), None,
                        cwd=ROOT if WORKSPACE.exists() else home)
        children.append(dagster)
        started = time.monotonic()
        errors = _wait_for_ui(ui_url, dagster, args.startup_timeout)
        for error in errors:
            _say(f"code location failed to load: {error}")
        _say(f"healthy after {time.monotonic() - started:.0f} s; Ctrl-C stops everything")
        print(f"Dagster UI: {ui_url}", flush=True)

        while True:
            time.sleep(1)
            for child in children:
                if child.process.poll() is not None:
                    raise StartError(child.exited())
            _reap_orphans()
    except _Stop as stop:
        _say(f"{stop} received, stopping")
    except KeyboardInterrupt:
        _say("stopping")
    except StartError as error:
        print(f"reporting-pipeline dev: {error}", file=sys.stderr)
        code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: _say("still stopping, please wait"))
        for child in reversed(children):  # Dagster first, so no run is left talking to a stopped service
            child.stop(grace=40 if child.name == "dagster dev" else 10)
        me = os.getpid()
        _kill_all(lambda table: _descendants(me, table), grace=5)
        _say("stopped")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reporting_pipeline.local.dev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dev_arguments(parser)
    return dev_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

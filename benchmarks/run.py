"""Benchmarks: render limit, one shard end to end through Dagster, scale (1k/10k), orchestration overhead.

    python benchmarks/run.py [--quick] [--sizes 1000 10000]

Prints a table and writes benchmarks/results.json. Each scale point runs in a fresh process so its
peak RSS is its own. S3 (moto) and SMTP (the .eml sink) run in processes of their own, as they are
remote in production. MongoDB is mongomock inside the run's process (its CPU is timed and reported
apart); the run's CPU per report is also measured against a MongoDB-wire server in a process of its
own, as in production. With mongomock the run's process also holds the database: the run's own memory
is reported as its peak minus the post-seed baseline (VmHWM is reset after seeding through
/proc/self/clear_refs), the worker processes' peak is sampled from /proc.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
WEEK = "2026-11-16"  # the last full week before NOW: the week every run reports on


def _vm(field: str, pid: str = "self") -> int:
    """A /proc/PID/status figure in KiB (VmRSS, VmHWM, PPid); 0 for a process that is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _exists(pid: str) -> bool:
    return Path(f"/proc/{pid}/status").exists()


def _is_forkserver(pid: str) -> bool:
    try:
        return b"multiprocessing.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class WorkerPeaks(threading.Thread):
    """Samples the peak RSS (VmHWM) of the run's worker processes while it goes on.

    getrusage(RUSAGE_CHILDREN) would not do: it also counts every child forked to exec another
    program, whose RSS at the fork is this whole process.
    """

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval, self.peak_kib, self.done = interval, 0, threading.Event()
        # Its own CPU, to take out of the run's: a scan of /proc reads every process's status, about 0.4 CPU-s
        # of a 500-subscriber benchmark (measured with py-spy), which is not the run's.
        self.cpu_s = 0.0

    def run(self):
        me = str(os.getpid())
        while not self.done.wait(self.interval):
            # Workers are forked by the forkserver, this process's child: they are its children.
            parents = {pid: _vm("PPid", pid) for pid in filter(str.isdigit, os.listdir("/proc")) if _exists(pid)}
            servers = {pid for pid, ppid in parents.items() if str(ppid) == me and _is_forkserver(pid)}
            for pid, ppid in parents.items():
                if str(ppid) in servers:
                    try:
                        self.peak_kib = max(self.peak_kib, _vm("VmHWM", pid))
                    except OSError:
                        pass  # exited meanwhile
            self.cpu_s = time.thread_time()

    def stop(self) -> float:
        self.done.set()
        self.join()
        return round(self.peak_kib / 1024, 1)


def render_limit(reports: int, rounds: int) -> dict:
    """The renderer alone, one process, on the reports the end-to-end runs render: the physical limit per core.

    The same seed (subscribers, week, photos, diaries) is fetched, downloaded and aggregated first, untimed,
    so the run's CPU per report is compared with rendering those very reports, not lighter stand-ins.
    """
    import tempfile

    from reporting_pipeline.local.seed import seed
    from reporting_pipeline.services import mongo
    from reporting_pipeline.services.objectstore import Encryption, make_client
    from reporting_pipeline.stages.aggregate import aggregate_many
    from reporting_pipeline.stages.fetch import iter_subscriber_batches, load_files
    from reporting_pipeline.stages.render import render_report_checked
    from reporting_pipeline.weeks import Week

    with tempfile.TemporaryDirectory() as work, remote_services(Path(work)) as (env, _, _):
        db = mongo.connect(env["MONGODB_URI"])["reporting"]
        s3 = make_client(env["AWS_ENDPOINT_URL"])
        seed(db, s3, env["REPORTS_BUCKET"], Encryption(), subscribers=reports, weeks=2, now=NOW)
        week = Week.from_key(WEEK, "UTC")
        inputs = []
        for batch in iter_subscriber_batches(db, week, "00", 1, 50):
            loaded = [b for b in load_files(s3, env["REPORTS_BUCKET"], batch) if not isinstance(b, BaseException)]
            inputs += [r for r in aggregate_many(loaded, "UTC") if not isinstance(r, BaseException)]
    render_report_checked(inputs[0])  # warm-up: fonts, imports
    timed = []
    for _ in range(rounds):
        started = time.process_time()  # CPU, not wall: one process on one core, and a busy machine does not count
        for report in inputs:
            render_report_checked(report)
        timed.append(time.process_time() - started)
    seconds = sorted(timed)[len(timed) // 2]
    return {"reports": len(inputs), "cpu_seconds": round(seconds, 3),
            "reports_per_s_per_core": round(len(inputs) / seconds, 2),
            "rounds": sorted(round(len(inputs) / t, 2) for t in timed),
            "all_cores": _render_on_all_cores(inputs, rounds)}


_RENDER_INPUTS: list = []


def _render_all(first_only: bool) -> tuple[int, float]:
    from reporting_pipeline.stages.render import render_report_checked

    started = time.process_time()
    for report in _RENDER_INPUTS[:1] if first_only else _RENDER_INPUTS:
        render_report_checked(report)
    return os.getpid(), time.process_time() - started


def _render_on_all_cores(inputs: list, rounds: int) -> dict:
    """The renderer alone on every core at once: the most reports a run on this machine could render.

    Cores that render side by side each render slower than one alone (they share caches and memory
    bandwidth, and a virtual machine's cores may share more): measured 4-11% more CPU a report on each of
    two cores than on one alone. So the limit of all the cores is measured, not one core's times their number.
    """
    from multiprocessing import get_context

    cores = os.cpu_count() or 1
    _RENDER_INPUTS[:] = inputs  # forked processes inherit them: nothing to pickle
    throughput, cpu_ms = [], []
    with get_context("fork").Pool(cores) as pool:
        pool.map(_render_all, [True] * cores, chunksize=1)  # warm-up: fonts, imports
        for _ in range(rounds):
            started = time.perf_counter()
            done = pool.map(_render_all, [False] * cores, chunksize=1)
            throughput.append(cores * len(inputs) / (time.perf_counter() - started))
            if len({pid for pid, _ in done}) < cores:  # one process rendered twice: not all cores at once
                raise RuntimeError("the render processes did not run side by side")
            cpu_ms.append(1000 * sum(cpu for _, cpu in done) / (cores * len(inputs)))
    return {"processes": cores, "reports_per_s": round(sorted(throughput)[rounds // 2], 2),
            "cpu_ms_per_report": round(sorted(cpu_ms)[rounds // 2], 1),
            "rounds": sorted(round(t, 2) for t in throughput)}


@contextmanager
def remote_services(work: Path):
    """S3 (moto) and SMTP (the .eml sink) in processes of their own, as they are remote in production.

    In the run's process they would take its GIL, and count against its CPU and memory.
    """
    import uuid

    from reporting_pipeline.local.dev import Child
    from reporting_pipeline.local.embedded import free_port, patched_env

    s3 = Child("S3 (moto)", [sys.executable, "-m", "reporting_pipeline.local.embedded", "s3", "--bucket", "clinical-reports"],
               dict(os.environ), work / "s3.log", ready_line=True)
    smtp = Child("SMTP sink", [sys.executable, "-m", "reporting_pipeline.local.outbox", "serve", "--port", str(free_port()),
                               "--folder", str(work / "outbox")], dict(os.environ), work / "smtp.log", ready_line=True)
    try:
        env = {
            "MONGODB_URI": f"mongomock://{uuid.uuid4().hex}",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3.wait_ready_line(30)}",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
            "REPORTS_BUCKET": "clinical-reports",
            "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.wait_ready_line(30)),
            "EMAIL_FROM": "reports@trial-reports.example.org",
        }
        with patched_env(env):
            yield env, work / "outbox", [s3.process.pid, smtp.process.pid]
    finally:
        s3.stop(5)
        smtp.stop(5)


class DatabaseCpu:
    """CPU the in-process MongoDB (mongomock) spends answering the run: in production that work is the
    database server's, so it is reported apart. Each call of a collection or cursor is timed on its own
    thread's clock (the run queries from several threads); a call made inside another is not counted twice."""

    METHODS = ("find_one", "find_one_and_update", "insert_one", "insert_many", "update_one", "update_many",
               "replace_one", "delete_one", "delete_many", "count_documents", "aggregate", "bulk_write")

    def __init__(self):
        self.seconds, self._inside, self._patched, self._lock = 0.0, threading.local(), [], threading.Lock()

    def _timed(self, original):
        def call(*args, **kwargs):
            if getattr(self._inside, "active", False):
                return original(*args, **kwargs)
            self._inside.active, started = True, time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                spent = time.thread_time() - started
                with self._lock:  # several threads add to it
                    self.seconds += spent
                self._inside.active = False
        return call

    def __enter__(self):
        from mongomock.collection import Collection, Cursor

        for owner, names in ((Collection, self.METHODS), (Cursor, ("__next__", "next"))):
            for name in names:
                if name in vars(owner):
                    self._patched.append((owner, name, vars(owner)[name]))
                    setattr(owner, name, self._timed(vars(owner)[name]))
        return self

    def __exit__(self, *exc):
        for owner, name, original in self._patched:
            setattr(owner, name, original)


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a live process has used (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SEED_UNIT = 1000  # larger populations are copies of a seeded thousand


def replicate(db, s3, bucket: str, copies: int) -> None:
    """Add `copies` more of every seeded participant: enrollment, subscription, records and files under new ids.

    Seeding 10,000 participants through the production paths one at a time would take hours against the
    stand-ins. Here the copies are bulk-inserted with the indexes dropped and rebuilt after, and the S3
    objects are copied server-side.
    """
    from concurrent.futures import ThreadPoolExecutor

    from reporting_pipeline.services import mongo
    from reporting_pipeline.sharding import shard_bucket
    from reporting_pipeline.stages.store import file_key
    from reporting_pipeline.stages.subscribe import subscription_id

    enrollments = list(db[mongo.ENROLLMENTS].find())
    subscriptions = {s["participant_id"]: s for s in db[mongo.SUBSCRIPTIONS].find()}
    records, files = list(db[mongo.RECORDS].find()), list(db[mongo.FILES].find())
    for name in (mongo.ENROLLMENTS, mongo.SUBSCRIPTIONS, mongo.RECORDS, mongo.FILES):
        db[name].drop_indexes()
    copied_objects = []
    for c in range(1, copies + 1):
        pid = {e["participant_id"]: f"{e['participant_id']}-{c:03d}" for e in enrollments}
        db[mongo.ENROLLMENTS].insert_many([{**e, "_id": f"{e['_id']}-{c:03d}", "participant_id": pid[e["participant_id"]],
                                            "email": e["email"].replace("@", f"+{c:03d}@")} for e in enrollments])
        subs = []
        for e in enrollments:
            sub = subscriptions[e["participant_id"]]
            sid = subscription_id(sub["trial_id"], pid[e["participant_id"]])
            subs.append({**sub, "_id": sid, "participant_id": pid[e["participant_id"]], "shard_bucket": shard_bucket(sid),
                         "enrollment_id": f"{e['_id']}-{c:03d}", "email": sub["email"].replace("@", f"+{c:03d}@")})
        db[mongo.SUBSCRIPTIONS].insert_many(subs)
        db[mongo.RECORDS].insert_many([{**r, "_id": f"{r['_id']}-{c:03d}", "participant_id": pid[r["participant_id"]]}
                                       for r in records])
        new_files = []
        for f in files:
            fid = f"{f['_id']}-{c:03d}"
            key = file_key(f["trial_id"], pid[f["participant_id"]], fid, f["s3_key"].rsplit(".", 1)[-1])
            new_files.append({**f, "_id": fid, "participant_id": pid[f["participant_id"]], "s3_key": key})
            copied_objects.append((f["s3_key"], key))
        db[mongo.FILES].insert_many(new_files)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda pair: s3.copy_object(Bucket=bucket, Key=pair[1], CopySource={"Bucket": bucket, "Key": pair[0]},
                                                  ServerSideEncryption="AES256"), copied_objects))
    mongo.ensure_indexes(db)


def shard_run(subscribers: int, wire: bool = False) -> dict:
    """Seed `subscribers` into one shard, then run the report and delivery jobs through Dagster.

    Runs in a fresh process, so the figures include everything a run pays for in production: the
    forkserver's imports and the workers' start (`children` CPU), not only the per-report work.
    MongoDB is mongomock in this process (the cheapest stand-in: throughput), or with `wire` a
    MongoDB-wire server (mongoeco) in its own process: the run then pays what a MongoDB client pays
    (BSON, sockets) and nothing of the server's work, as in production, but that stand-in takes
    six times mongomock's CPU from the machine, so only the run's CPU is read from it.
    """
    os.environ["REPORT_SHARDS"] = "1"
    os.environ.setdefault("REPORT_STEP_RETRY_DELAY_SECONDS", "1")
    import tempfile

    from dagster import DagsterEventType, DagsterInstance

    from reporting_pipeline.local.seed import SeedSpec, seed, upload_objects
    from reporting_pipeline.local.wire_mongo import MongoWireServer
    from reporting_pipeline.services import mongo
    from reporting_pipeline.services.objectstore import Encryption, make_client

    with (tempfile.TemporaryDirectory() as work, remote_services(Path(work)) as (env, outbox, stand_ins),
          ExitStack() as stack):
        t = time.perf_counter()
        s3 = make_client(env["AWS_ENDPOINT_URL"])
        unit = min(subscribers, SEED_UNIT)
        if unit and subscribers % unit:
            raise SystemExit(f"sizes above {SEED_UNIT} must be multiples of it")
        # 0 subscribers: an empty shard, for what a run costs before its first subscriber.
        spec = SeedSpec(subscribers=unit, weeks=2, now=NOW.isoformat()) if unit else None
        if wire:
            if spec:  # what seed() uploads and writes; the documents loaded in the server's own process
                upload_objects(s3, env["REPORTS_BUCKET"], Encryption(), spec)
            server = stack.enter_context(MongoWireServer(seed=spec))
            os.environ["MONGODB_URI"] = server.uri  # remote_services puts back what was there
            stand_ins = [*stand_ins, server.process.pid]
            db = mongo.connect(server.uri)["reporting"]

            def database_cpu() -> float:
                return _process_cpu_s(server.process.pid)
        else:
            db = mongo.connect(env["MONGODB_URI"])["reporting"]
            if spec:
                seed(db, s3, env["REPORTS_BUCKET"], Encryption(), subscribers=unit, weeks=2, now=NOW)
            in_process = stack.enter_context(DatabaseCpu())

            def database_cpu() -> float:
                return in_process.seconds
        if subscribers > unit:
            replicate(db, s3, env["REPORTS_BUCKET"], subscribers // unit - 1)
        seed_seconds = time.perf_counter() - t
        from reporting_pipeline.defs.definitions import build_definitions
        from reporting_pipeline.defs.partitions import report_partition_key

        definitions = build_definitions()
        key = report_partition_key(WEEK, "00")
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        # Give back what seeding freed, so the run cannot hide in it, then reset VmHWM: the peak from
        # here on is the run's.
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        baseline = _vm("VmRSS")
        workers = WorkerPeaks()
        workers.start()
        import resource

        def cpu_seconds():  # this process, and the worker processes it has reaped; not the RSS sampling thread
            return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                       for f in ("ru_utime", "ru_stime")) - workers.cpu_s

        def stop_forkserver():
            # Workers are forked by the forkserver, which reaps them; stopping and reaping it here brings
            # its CPU and theirs into RUSAGE_CHILDREN (multiprocessing has no public call for this).
            from multiprocessing import forkserver

            forkserver._forkserver._stop()

        cpu_before = cpu_seconds()
        stand_ins_before = sum(_process_cpu_s(pid) for pid in stand_ins)
        database_before = database_cpu()
        with DagsterInstance.ephemeral() as instance:
            # A process's first Dagster instance imports its storage modules and (here, in memory) creates
            # their schema: every run pod pays such a start (production's on PostgreSQL: ~1.5 CPU-s measured),
            # but it is Dagster's, not the run's, so it is shown apart.
            instance_cpu = cpu_seconds() - cpu_before
            launched = time.time()
            t = time.perf_counter()
            result = definitions.resolve_job_def("weekly_reports_job").execute_in_process(
                instance=instance, partition_key=key, run_config=quiet)
            render_seconds = time.perf_counter() - t
            report_run_cpu = cpu_seconds() - cpu_before  # workers not counted yet: the forkserver is not reaped
            t = time.perf_counter()
            delivery = definitions.resolve_job_def("report_delivery_job").execute_in_process(
                instance=instance, partition_key=key, run_config=quiet)
            deliver_seconds = time.perf_counter() - t
            stand_ins_cpu = sum(_process_cpu_s(pid) for pid in stand_ins) - stand_ins_before
            database_seconds = database_cpu() - database_before
            starts = {e.step_key: e.timestamp for e in instance.all_logs(
                result.run_id, of_type=DagsterEventType.STEP_START)}
            first_batch = min((e.timestamp for e in instance.all_logs(result.run_id)
                               if "subscribers fetched" in e.user_message), default=float("nan"))
            steps = {}
            for run_id in (result.run_id, delivery.run_id):
                began = {e.step_key: e.timestamp for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)}
                for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS):
                    steps[e.step_key] = round(e.timestamp - began[e.step_key], 2)
        from reporting_pipeline.local.demo import materialization_metadata

        materialized = materialization_metadata(result, "report_pdfs")
        stop_forkserver()
        peak = _vm("VmHWM")
        run_cpu = cpu_seconds() - cpu_before
        worker_peak = workers.stop()
        assert result.success and delivery.success
        reports = db[mongo.REPORTS].count_documents({})
        return {
            "subscribers": subscribers,
            "reports": reports,
            "emails": len(list(outbox.glob("*.eml"))),
            "seed_seconds": round(seed_seconds, 1),
            "report_run_seconds": round(render_seconds, 2),
            "delivery_run_seconds": round(deliver_seconds, 2),
            "wall_seconds": round(render_seconds + deliver_seconds, 2),
            "reports_per_s": round(reports / (render_seconds + deliver_seconds), 2),
            "peak_rss_mib": round(peak / 1024, 1),
            "baseline_rss_mib": round(baseline / 1024, 1),
            "run_rss_mib": round((peak - baseline) / 1024, 1),
            "worker_peak_rss_mib": worker_peak,
            "step_seconds": steps,
            # CPU of the run and its workers (not of the S3/SMTP stand-ins): what a pod would need per report.
            "run_cpu_ms_per_report": round(1000 * run_cpu / max(reports, 1), 1),
            "launch_to_first_step_s": round(starts["build_reports"] - launched, 3),
            "run_cpu_s": round(run_cpu, 2),
            "report_run_cpu_s_without_workers": round(report_run_cpu, 2),
            "instance_cpu_s": round(instance_cpu, 2),
            "workers_started": bool(materialized.get("workers_started")),
            "launch_to_first_subscriber_s": round(first_batch - launched, 3),
            # What the stand-ins in processes of their own (S3, SMTP; MongoDB if `wire`) used of the machine
            # during the two runs: not counted above.
            "stand_ins_cpu_s": round(stand_ins_cpu, 2),
            "stand_ins_cores": round(stand_ins_cpu / (render_seconds + deliver_seconds), 2),
            "database": "mongoeco wire server" if wire else "mongomock in the run's process",
            # What the MongoDB stand-in spent answering the run (a MongoDB server's work in production).
            "database_cpu_ms_per_report": round(1000 * database_seconds / max(reports, 1), 1),
            "run_cpu_ms_per_report_without_database": round(
                1000 * (run_cpu - (0 if wire else database_seconds)) / max(reports, 1), 1),
        }


def pool_start(workers: int) -> dict:
    """CPU and wall time to start a run's worker pool as a run does, each worker ready for its first subscriber
    (its S3 client made), and have every worker answer once (fresh process)."""
    import resource
    from functools import partial
    from multiprocessing import forkserver

    from reporting_pipeline.stages.stream import BuildJob, prepare
    from reporting_pipeline.stages.workers import WorkerPool, each

    job = BuildJob(endpoint_url="http://127.0.0.1:9", region=None, bucket="unused", week_timezone="UTC")

    def cpu():
        return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))

    before, started = cpu(), time.perf_counter()
    with WorkerPool(workers, warm_up=partial(prepare, job)) as pool:
        pool.map(each(len), [[]] * (4 * workers))
    wall = time.perf_counter() - started
    forkserver._forkserver._stop()  # reap it: its CPU and its workers' come into RUSAGE_CHILDREN
    return {"workers": workers, "cpu_s": round(cpu() - before, 3), "wall_s": round(wall, 3)}


def in_subprocess(subscribers: int, option: str = "--one-shard", *more: str) -> dict:
    out = subprocess.run([sys.executable, __file__, option, str(subscribers), *more], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_of(rounds: int, run, key: str) -> dict:
    results = sorted((run() for _ in range(rounds)), key=lambda r: r[key])
    return {**results[len(results) // 2], "rounds": [r[key] for r in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--one-shard", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pool-start", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--wire", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_shard is not None:
        print(json.dumps(shard_run(args.one_shard, wire=args.wire)))
        return
    if args.pool_start:
        print(json.dumps(pool_start(args.pool_start)))
        return
    sizes = [50, 200] if args.quick else args.sizes
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "platform": platform.platform(), "processor": platform.processor() or platform.machine()},
               "date": datetime.now(UTC).isoformat(timespec="seconds")}
    # Three rounds of each, median reported: a 2-core machine's figures move by several percent.
    rounds = 1 if args.quick else 3
    results["render_limit"] = render_limit(40 if args.quick else 200, rounds)
    per_core = results["render_limit"]["reports_per_s_per_core"]
    all_cores = results["render_limit"]["all_cores"]
    print(f"render limit: {per_core} reports/s on one core, {all_cores['reports_per_s']} on all "
          f"{all_cores['processes']} at once ({all_cores['cpu_ms_per_report']} CPU-ms a report each)", flush=True)
    cores = os.cpu_count() or 1

    def ratios(point: dict) -> dict:
        # Against what the renderer alone does on all the cores at once (the run renders on all of them),
        # and, beside it, against one core's limit times the number of cores (which no machine reaches).
        # The runs share the machine with the stand-ins in processes of their own (S3 and SMTP; MongoDB too
        # over the wire): the render limit of the cores those leave.
        left = max(0.1, cores - point["stand_ins_cores"])
        return {"ratio_to_render_limit": round(point["reports_per_s"] / per_core, 2),
                "ratio_to_render_limit_all_cores": round(point["reports_per_s"] / all_cores["reports_per_s"], 2),
                "ratio_to_one_core_limit_times_cores": round(point["reports_per_s"] / (per_core * cores), 2),
                "cores_left_by_stand_ins": round(left, 2),
                "ratio_to_render_limit_cores_left": round(
                    point["reports_per_s"] / (all_cores["reports_per_s"] * left / cores), 2),
                "cpu_ratio_to_render": round(point["run_cpu_ms_per_report"] / all_cores["cpu_ms_per_report"], 2),
                "cpu_ratio_to_render_one_core": round(point["run_cpu_ms_per_report"] * per_core / 1000, 2)}

    # What every run pays before its first report: Dagster's run in-process on an empty shard, and
    # the worker pool's start (forkserver imports, forks), each in a fresh process.
    empty = median_of(rounds, lambda: in_subprocess(0), "run_cpu_s")
    pool = median_of(rounds, lambda: in_subprocess(cores, "--pool-start"), "cpu_s")
    results["fixed_cost"] = {"empty_run_cpu_s": empty["run_cpu_s"], "empty_run_rounds": empty["rounds"],
                             "empty_report_run_cpu_s": empty["report_run_cpu_s_without_workers"],
                             "of_which_dagster_instance_cpu_s": empty["instance_cpu_s"],
                             "empty_run_wall_s": empty["wall_seconds"], "pool_start_cpu_s": pool["cpu_s"],
                             "pool_start_wall_s": pool["wall_s"], "pool_start_rounds": pool["rounds"],
                             "workers": pool["workers"],
                             "report_run_with_pool_cpu_s": round(
                                 empty["report_run_cpu_s_without_workers"] + pool["cpu_s"], 2)}
    print(f"fixed cost: empty report run {empty['report_run_cpu_s_without_workers']} CPU-s ("
          f"{empty['instance_cpu_s']} of it Dagster's instance; with delivery "
          f"{empty['run_cpu_s']}), pool start {pool['cpu_s']} CPU-s", flush=True)
    e2e_size = 100 if args.quick else 500
    e2e = median_of(rounds, lambda: in_subprocess(e2e_size), "reports_per_s")
    e2e.update(ratios(e2e))
    results["end_to_end"] = e2e
    print(f"end to end ({e2e_size}): {e2e['reports_per_s']} reports/s, ratio {e2e['ratio_to_render_limit']}, "
          f"all cores {e2e['ratio_to_render_limit_all_cores']} (one core's x {cores}: "
          f"{e2e['ratio_to_one_core_limit_times_cores']}), cores the stand-ins left "
          f"{e2e['ratio_to_render_limit_cores_left']}, CPU {e2e['cpu_ratio_to_render']}x render "
          f"({e2e['cpu_ratio_to_render_one_core']}x one idle core's)", flush=True)
    # The run's own CPU as in production, where MongoDB is a server elsewhere: over the wire protocol.
    wire = median_of(rounds, lambda: in_subprocess(e2e_size, "--one-shard", "--wire"), "run_cpu_ms_per_report")
    wire.update(ratios(wire))
    results["end_to_end_over_the_wire"] = wire
    print(f"over the wire ({e2e_size}): run CPU {wire['run_cpu_ms_per_report']} ms a report = "
          f"{wire['cpu_ratio_to_render']}x render ({wire['cpu_ratio_to_render_one_core']}x one idle core's); "
          f"the MongoDB stand-in's own {wire['database_cpu_ms_per_report']} ms", flush=True)
    results["small_shards"] = []
    for n in (50, 100):
        point = median_of(rounds, lambda: in_subprocess(n), "reports_per_s")
        point.update(ratios(point))
        results["small_shards"].append(point)
        print(f"small shard ({n}): {point['reports_per_s']} reports/s, {point['run_cpu_ms_per_report']} CPU-ms/report, "
              f"workers started: {point['workers_started']}", flush=True)
    results["ratio_to_render_limit_all_cores"] = e2e["ratio_to_render_limit_all_cores"]
    results["ratio_to_render_limit_cores_left"] = e2e["ratio_to_render_limit_cores_left"]
    results["ratio_to_one_core_limit_times_cores"] = e2e["ratio_to_one_core_limit_times_cores"]
    # The run's CPU per report is read over the wire: mongomock in the run's process adds its own work
    # (a MongoDB server's, elsewhere in production) and takes away the client's (BSON, sockets).
    results["cpu_ratio_to_render"] = wire["cpu_ratio_to_render"]
    results["cpu_ratio_to_render_one_core"] = wire["cpu_ratio_to_render_one_core"]
    target = HERE / ("results-quick.json" if args.quick else "results.json")

    # What other benchmarks wrote there (benchmarks/dev_stack.py) stays.
    kept = {key: value for key, value in (json.loads(target.read_text()) if target.exists() else {}).items()
            if key == "dev_stack"}

    def save():  # after every stage: a long run cut short keeps what it measured
        target.write_text(json.dumps({**results, **kept}, indent=2) + "\n")

    save()
    results["scale"] = []
    for n in sizes:
        point = in_subprocess(n)
        results["scale"].append(point)
        save()
        print(f"scale {n}: {point['wall_seconds']} s, {point['reports_per_s']} reports/s, "
              f"run RSS {point['run_rss_mib']} MiB", flush=True)
    if len(results["scale"]) >= 2:
        small, large = results["scale"][0], results["scale"][-1]
        results["rss_ratio_large_to_small"] = round(large["run_rss_mib"] / max(small["run_rss_mib"], 0.1), 2)
    print()
    print(f"{'benchmark':34} {'figure':>14}")
    print(f"{'render limit (reports/s/core)':34} {results['render_limit']['reports_per_s_per_core']:>14}")
    print(f"{'end to end (reports/s)':34} {e2e['reports_per_s']:>14}")
    print(f"{'end to end / render limit':34} {e2e['ratio_to_render_limit']:>14}")
    print(f"{'render limit, all cores (reports/s)':34} {all_cores['reports_per_s']:>14}")
    print(f"{'end to end / limit of all cores':34} {e2e['ratio_to_render_limit_all_cores']:>14}")
    print(f"{'end to end / (1-core limit x cores)':34} {e2e['ratio_to_one_core_limit_times_cores']:>14}")
    print(f"{'cores the stand-ins left':34} {e2e['cores_left_by_stand_ins']:>14}")
    print(f"{'end to end / (limit x cores left)':34} {e2e['ratio_to_render_limit_cores_left']:>14}")
    print(f"{'run CPU / render CPU per report':34} {results['cpu_ratio_to_render']:>14}")
    print(f"{'  the same, render on an idle core':34} {results['cpu_ratio_to_render_one_core']:>14}")
    print(f"{'  mongomock in the run (its CPU too)':34} {e2e['cpu_ratio_to_render']:>14}")
    print(f"{'fixed cost: empty report run (CPU-s)':34} {results['fixed_cost']['empty_report_run_cpu_s']:>14}")
    print(f"{'  of it Dagster instance (CPU-s)':34} {results['fixed_cost']['of_which_dagster_instance_cpu_s']:>14}")
    print(f"{'fixed cost: pool start (CPU-s)':34} {results['fixed_cost']['pool_start_cpu_s']:>14}")
    for p in results["small_shards"]:
        print(f"{'shard ' + str(p['subscribers']) + ' reports/s':34} {p['reports_per_s']:>14}")
        print(f"{'shard ' + str(p['subscribers']) + ' run CPU (ms/report)':34} {p['run_cpu_ms_per_report']:>14}")
    for p in results["scale"]:
        print(f"{'scale ' + str(p['subscribers']) + ' wall (s)':34} {p['wall_seconds']:>14}")
        print(f"{'scale ' + str(p['subscribers']) + ' reports/s':34} {p['reports_per_s']:>14}")
        print(f"{'scale ' + str(p['subscribers']) + ' run RSS (MiB)':34} {p['run_rss_mib']:>14}")
        print(f"{'scale ' + str(p['subscribers']) + ' worker peak RSS (MiB)':34} {p['worker_peak_rss_mib']:>14}")
        print(f"{'scale ' + str(p['subscribers']) + ' run CPU (ms/report)':34} {p['run_cpu_ms_per_report']:>14}")
        print(f"{'scale ' + str(p['subscribers']) + ' launch->1st subscriber (s)':34} {p['launch_to_first_subscriber_s']:>14}")
    if "rss_ratio_large_to_small" in results:
        print(f"{'run RSS ratio largest/smallest':34} {results['rss_ratio_large_to_small']:>14}")
    save()
    print(f"\nwritten to {target}")


if __name__ == "__main__":
    main()

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from reporting_pipeline.operations.dead_letters import record_dead_letter
from reporting_pipeline.services.mongo import connect
from reporting_pipeline.stages.workers import WorkerPool, each

ROOT = Path(__file__).resolve().parents[1]


def pids(folders):
    """Each chunk waits until two processes have taken chunks (each item is the same meeting folder): the
    pool's first worker cannot take every chunk before the second has started."""
    meeting = Path(folders[0])
    (meeting / str(os.getpid())).touch()
    deadline = time.monotonic() + 30
    while len(list(meeting.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return [os.getpid() for _ in folders]


class Unpicklable(Exception):
    def __init__(self, message, *, detail):  # keyword-only: pickle cannot rebuild it from its args
        super().__init__(message)
        self.detail = detail


def failing(item):
    if item == 3:
        raise ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")
    if item == 5:
        raise Unpicklable("participant P-1 weighs 80 kg", detail=item)
    return item * 10


def test_results_come_back_in_order_with_failures_in_place_even_those_that_do_not_pickle(tmp_path):
    with WorkerPool(2) as pool:
        assert len(set(pool.map(pids, [str(tmp_path)] * 8)) - {os.getpid()}) == 2  # two processes, not this one
        results = pool.map(each(failing), list(range(8)))
    assert [r for i, r in enumerate(results) if i not in (3, 5)] == [0, 10, 20, 40, 60, 70]
    assert isinstance(results[3], ClientError)
    # An exception pickle cannot rebuild comes back as what a dead letter needs, without its text.
    carried = results[5]
    assert (type(carried).__name__, carried.error_class, carried.transient) == ("CarriedFailure", "Unpicklable", False)
    assert "P-1" not in str(carried) and "test_workers.py" in str(carried)
    db = connect("mongomock://test-workers")["reporting"]
    for sub, error in (("sub_3", results[3]), ("sub_5", carried)):
        record_dead_letter(db, subscription_id=sub, week="2026-11-16", stage="fetch", error=error)
    letters = {d["subscription_id"]: (d["error_class"], d["transient"]) for d in db.dead_letters.find()}
    assert letters == {"sub_3": ("ClientError", True), "sub_5": ("Unpicklable", False)}


def warm_up():
    os.environ["WARMED_UP_IN"] = str(os.getpid())


def cannot_warm_up():
    raise RuntimeError("no S3 client today")


def warmed(items):
    return [os.environ.get("WARMED_UP_IN") == str(os.getpid()) for _ in items]


def test_each_worker_warms_up_as_it_starts_and_a_warm_up_that_fails_breaks_nothing(tmp_path):
    (tmp_path / "a").mkdir()
    with WorkerPool(2, warm_up=warm_up) as pool:
        assert len(set(pool.map(pids, [str(tmp_path / "a")] * 8))) == 2  # both workers have started
        assert pool.map(warmed, list(range(8))) == [True] * 8
    (tmp_path / "b").mkdir()
    with WorkerPool(2, warm_up=cannot_warm_up) as pool:
        assert len(set(pool.map(pids, [str(tmp_path / "b")] * 8))) == 2
        assert pool.map(each(failing), list(range(3))) == [0, 10, 20]


def what_a_worker_starts_with(items):
    import gc

    # Workers are forked by the forkserver: their parent is the server whose imports they share.
    server = Path(f"/proc/{os.getppid()}/status").read_text()
    server_threads = int(next(line.split()[1] for line in server.splitlines() if line.startswith("Threads:")))
    modules = sorted({"pandas", "reportlab", "boto3", "pymongo"} & set(sys.modules))
    import boto3

    # What a worker's S3 client is made from, loaded by the server (botocore caches it on the default session).
    session = boto3.DEFAULT_SESSION
    cached = {key[:2] for key in session._session.get_component("data_loader")._cache} if session else set()
    s3_model = ("load_service_model", "s3") in cached
    return [(gc.get_freeze_count(), gc.isenabled(), modules, server_threads, s3_model) for _ in items]


def test_workers_start_with_what_they_run_imported_once_and_out_of_the_garbage_collectors_way():
    """The forkserver's preload is what saves each worker a second and a half of imports; multiprocessing
    ignores a preload that fails to import, so this is where a broken one shows. It loads only what workers
    run: not pymongo (workers never talk to MongoDB), and numpy without OpenBLAS's thread per core (no report
    does linear algebra; starting them was a tenth of a CPU-second of every pool's start). botocore's S3 model
    is loaded there too, without starting a thread."""
    with WorkerPool(2) as pool:
        started = pool.map(what_a_worker_starts_with, list(range(4)))
    for frozen, collecting, modules, server_threads, s3_model in started:
        assert modules == ["boto3", "pandas", "reportlab"]
        assert s3_model  # a worker's client takes ~17 ms instead of ~100
        assert frozen > 50_000 and collecting  # imported with the collector off, frozen, then it is back on
        assert server_threads == 1


def test_the_servers_s3_warm_up_asks_no_credential_provider(tmp_path):
    """The server loads botocore's S3 model before any run's settings reach it, through a client with dummy keys:
    on a machine without credentials it must not wait on the instance metadata service (seconds per pool)."""
    with socket.socket() as metadata:
        metadata.bind(("127.0.0.1", 0))
        metadata.listen(8)
        metadata.setblocking(False)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{metadata.getsockname()[1]}/",
            "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
        subprocess.run([sys.executable, "-c", "from reporting_pipeline.services.objectstore import load_client_models;"
                        "load_client_models()"], env=env, check=True, timeout=120)
        with pytest.raises(BlockingIOError):  # the call has returned: a connection it made would be waiting here
            metadata.accept()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_workers_exit_when_their_step_process_is_killed(tmp_path):
    script = (
        "import sys, time\n"
        "from reporting_pipeline.stages.workers import WorkerPool\n"
        "from reporting_pipeline_tests.test_workers import pids\n"
        "if __name__ == '__main__':\n"
        "    pool = WorkerPool(2)\n"
        "    print(*sorted(set(pool.map(pids, [sys.argv[1]] * 8))), flush=True)\n"
        "    time.sleep(120)\n"
    )
    step = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in step.stdout.readline().split()]
    assert len(workers) == 2 and all(_state(p) not in ("gone", "Z") for p in workers)
    step.send_signal(signal.SIGKILL)
    step.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_state(p) not in ("gone", "Z") for p in workers):
        time.sleep(0.2)
    assert [_state(p) for p in workers if _state(p) not in ("gone", "Z")] == []

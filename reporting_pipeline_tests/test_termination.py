"""SIGTERM stops the image's processes within Kubernetes' grace period (terminationGracePeriodSeconds, 30 s).

In a pod the container's process is PID 1 of its own PID namespace, and the kernel discards a signal sent
to PID 1 for which it has no handler. Each test runs a command as PID 1 of a new PID namespace
(`unshare --pid`) and signals it from outside, as the kubelet does; with and without the image's init,
tini (`ENTRYPOINT ["/usr/bin/tini", "--"]` in deploy/Dockerfile).

Measured on the 2-core development machine (the tests print their figures):
- `dagster code-server start` and `dagster api grpc`, once serving, exit 2-4 s after SIGTERM, as PID 1
  too and with or without tini: Dagster installs a SIGTERM handler of its own (not PID 1: the same).
- A SIGTERM that arrives while they start, before Dagster has installed that handler (its first second
  or two), is discarded when they are PID 1: the server comes up and serves until the kubelet's SIGKILL
  30 s later. Under tini the same signal ends it at once (0.0 s).
- `dagster api execute_run` (a run pod), signalled mid-step: the signal interrupts the step at once, with
  or without tini. Dagster would retry an interrupted step that has a RetryPolicy (the run went on until
  the SIGKILL); the pipeline's steps fail instead and the run is left to the daemon's run retry.
- A code server exits only once its in-flight calls have returned: a sensor tick against an unreachable
  MongoDB held it for pymongo's 30 s server selection (exited 30.1 s after SIGTERM); the pipeline's client
  gives up after 10 s (reporting_pipeline.services.mongo), so the server exits well within the grace period.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from reporting_pipeline.local.embedded import free_port

from . import helm_chart
from .conftest import LAST_WEEK
from .test_production import BIN, LOCATION, ROOT, CodeServer, helm_values, production_home, wait_for_location

__all__ = ["production_home"]  # the fixture, shared with test_production.py

GRACE = 30  # Kubernetes' default terminationGracePeriodSeconds; neither the chart nor the launcher sets one
TINI = "/usr/bin/tini"  # Debian's tini, as the image installs it
START_TIMEOUT = 180  # a generous bound on a server's start on a busy 2-core machine: a hang fails, not blocks
SERVER_COMMANDS = {
    "code-server": ["code-server", "start"],  # what the chart runs
    "api-grpc": ["api", "grpc"],  # the chart's alternative (dagsterApiGrpcArgs)
}


@functools.cache
def _namespace_argv() -> tuple[tuple[str, ...], str]:
    """unshare's arguments that make the command PID 1 of a new PID namespace, or why there are none."""
    if not shutil.which("unshare"):
        return (), "no unshare here (Debian's util-linux)"
    # --kill-child: unshare's own death takes the namespace with it; --mount-proc: ps/proc as in a container.
    argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if os.geteuid() != 0:
        argv[1:1] = ["--user", "--map-root-user"]
    done = subprocess.run([*argv, "true"], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        return (), f"cannot create a PID namespace here ({' '.join(argv)}: {done.stderr.strip()})"
    return tuple(argv), ""


def as_pid_1(init: bool) -> list[str]:
    """The prefix running a command as PID 1 of a new PID namespace, under tini when `init`."""
    argv, reason = _namespace_argv()
    if not argv:
        pytest.skip(reason)
    if init and not os.access(TINI, os.X_OK):
        pytest.skip(f"{TINI} missing: run .ci/install-tini.sh (apt-get install tini)")
    # No -g: Dagster stops its own children; whatever is left dies with the namespace when tini exits.
    return [*argv, TINI, "--"] if init else list(argv)


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every process visible here."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            fields = stat[stat.rindex(")") + 2:].split()
            table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return table


def _children(pid: int) -> list[int]:
    return [child for child, (parent, _) in _processes().items() if parent == pid]


def _session(sid: int) -> list[int]:
    return [pid for pid, (_, session) in _processes().items() if session == sid]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _catches_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    raise AssertionError(f"no SigCgt in /proc/{pid}/status")


class Pod:
    """A command as a container's process: PID 1 of its own PID namespace, signalled from outside."""

    def __init__(self, argv: list[str], *, init: bool, env: dict, log: Path):
        self.argv, self.init, self.env, self.log = argv, init, env, log
        self.process: subprocess.Popen | None = None

    def __enter__(self):
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen([*as_pid_1(self.init), *self.argv], cwd=ROOT, env=self.env,
                                            start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.kill()  # unshare --kill-child: its namespace goes with it
            self.process.wait()

    def _wait_for(self, what: str, found, timeout: float = 30):
        """found()'s first truthy value; busy-waits in millisecond steps (it is a matter of milliseconds)."""
        deadline = time.monotonic() + timeout
        while not (value := found()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {what}: {self.tail()}")
            time.sleep(0.001)
        return value

    def pid_1(self) -> int:
        """PID 1 of the namespace, as this side sees it: what the kubelet signals."""
        return self._wait_for("PID 1", lambda: (_children(self.process.pid) or [None])[0])

    def dagster(self) -> int:
        """The process running the dagster command, once it has been exec'd (PID 1 itself, or tini's child)."""
        def exec_d():
            pid = self.pid_1()
            if self.init:
                pid = (_children(pid) or [None])[0]
            return pid if pid and any(Path(arg).name == "dagster" for arg in _cmdline(pid)[:2]) else None
        return self._wait_for("dagster process", exec_d)

    def terminate(self, timeout: float = 2 * GRACE) -> tuple[float, int]:
        """SIGTERM to PID 1; seconds until the whole namespace has exited, and its exit status."""
        return self.wait_gone(self.sigterm(), timeout)

    def sigterm(self) -> float:
        """SIGTERM to PID 1, as the kubelet sends it; when it was sent."""
        pid = self.pid_1()
        sent = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        return sent

    def wait_gone(self, since: float, timeout: float = 2 * GRACE) -> tuple[float, int]:
        """Seconds from `since` until the whole namespace has exited, and its exit status."""
        sid = self.process.pid  # start_new_session: unshare leads a session everything inside inherits
        try:
            status = self.process.wait(timeout=max(0.0, since + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {timeout} s after SIGTERM: {self.tail()}") from None
        while _session(sid):  # PID 1's exit kills the rest of its namespace; they are reaped right after
            assert time.monotonic() - since < timeout, f"left behind: {[_cmdline(p) for p in _session(sid)]}"
            time.sleep(0.01)
        return time.monotonic() - since, status

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def wait_until_serving(port: int, pod: Pod, timeout: float = START_TIMEOUT) -> float:
    """Seconds until the gRPC health service on `port` answers SERVING (the chart's readiness probe asks it)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    started = time.monotonic()
    # Reconnect attempts at most 0.5 s apart (gRPC's backoff would grow to minutes): seen as soon as it listens.
    options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
               ("grpc.max_reconnect_backoff_ms", 500)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            assert pod.process.poll() is None, f"exited before serving: {pod.tail()}"
            assert time.monotonic() - started < timeout, f"not serving after {timeout} s: {pod.tail()}"
            try:
                # wait_for_ready: the call waits for the port to accept, instead of failing at once.
                answer = health.Check(health_pb2.HealthCheckRequest(service="DagsterApi"), timeout=5,
                                      wait_for_ready=True)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # answering, but not the health check yet
                    time.sleep(0.1)
                continue  # else not listening yet: the call's 5 s ran out
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return time.monotonic() - started
            time.sleep(0.1)  # listening, not serving yet


@pytest.fixture
def server_env(tmp_path) -> dict:
    """A DAGSTER_HOME of its own (an empty dagster.yaml: the default instance) and the default settings."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    return {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "true",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def server_argv(command: str, port: int) -> list[str]:
    """The code server's command as the chart renders it (args only: they follow the image's ENTRYPOINT), on
    loopback, as `command` (the chart's other choice, `dagster api grpc`, takes the same arguments)."""
    [container] = helm_chart.code_server_deployment(helm_values())["spec"]["template"]["spec"]["containers"]
    assert "command" not in container
    args = container["args"]
    assert args[:3] == ["dagster", "code-server", "start"] and args[3] == "-h" and args[5] == "-p"
    return ["dagster", *SERVER_COMMANDS[command], "-h", "127.0.0.1", "-p", str(port), *args[7:]]


@pytest.mark.parametrize("init", [False, True], ids=["no-init", "tini"])
@pytest.mark.parametrize("command", list(SERVER_COMMANDS))
def test_a_serving_code_server_as_pid_1_stops_on_sigterm_within_the_grace_period(command, init, server_env, tmp_path):
    port = free_port()
    with Pod(server_argv(command, port), init=init, env=server_env, log=tmp_path / "server.log") as pod:
        ready = wait_until_serving(port, pod)
        seconds, status = pod.terminate()
    print(f"\n{command} as PID 1{' under tini' if init else ''}: serving after {ready:.1f} s; "
          f"exited {seconds:.1f} s after SIGTERM, status {status}")
    assert status == 0, pod.tail()  # Dagster's own shutdown, not a kill
    assert seconds < GRACE


@pytest.mark.parametrize("init", [False, True], ids=["no-init", "tini"])
def test_a_sigterm_while_the_code_server_starts_is_lost_as_pid_1_and_obeyed_under_tini(init, server_env, tmp_path):
    """The signal is sent as soon as the dagster command has been exec'd: Dagster's handler comes later."""
    port = free_port()
    with Pod(server_argv("code-server", port), init=init, env=server_env, log=tmp_path / "server.log") as pod:
        dagster = pod.dagster()
        if not init:
            os.kill(dagster, signal.SIGTERM)  # it is PID 1
            if _catches_sigterm(dagster):
                pytest.skip("Dagster had installed its SIGTERM handler before the signal arrived: nothing to show")
            # Discarded by the kernel, not pending: the server starts as if nothing had been sent.
            ready = wait_until_serving(port, pod)
            assert pod.process.poll() is None
            print(f"\ncode-server as PID 1, SIGTERM before its handler: discarded; serving {ready:.1f} s later "
                  "(a pod would be SIGKILLed at the end of its grace period)")
            return
        handler = _catches_sigterm(dagster)
        seconds, status = pod.terminate()
    print(f"\ncode-server under tini, SIGTERM while starting (handler installed: {handler}): "
          f"exited {seconds:.1f} s after it, status {status}")
    assert seconds < GRACE
    assert status in (0, 128 + signal.SIGTERM)  # Dagster's shutdown, or killed by the signal (tini passes it on)


class Unanswering:
    """A MongoDB that accepts connections and never answers (a server behind a dead link or a hung mongod):
    `reached` is set once a client has connected, which is how a test knows a call is waiting on it."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.reached = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.held.append(connection)
            self.reached.set()

    def close(self):
        self.listener.close()
        for connection in self.held:
            connection.close()


@pytest.fixture
def unanswering():
    mongodb = Unanswering()
    yield mongodb
    mongodb.close()


def test_a_code_server_stops_within_the_grace_period_while_a_sensor_waits_on_mongodb(server_env, unanswering, tmp_path):
    """A sensor tick in flight when SIGTERM comes holds the code server until it returns: with pymongo's
    default 30 s server selection, a tick against an unreachable MongoDB held it 30.1 s, past the grace period.
    The tick here is asked for as the daemon asks (the code server's sensor call, through `dagster sensor
    preview`), and SIGTERM is sent once the sensor's client has connected to a MongoDB that never answers."""
    port = free_port()
    env = {**server_env, "MONGODB_URI": f"mongodb://127.0.0.1:{unanswering.port}/"}  # no timeout options of its own
    with Pod(server_argv("code-server", port), init=True, env=env, log=tmp_path / "server.log") as pod:
        wait_until_serving(port, pod)
        tick = subprocess.Popen(["dagster", "sensor", "preview", "subscription_sensor", "--grpc-host", "127.0.0.1",
                                 "--grpc-port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            assert unanswering.reached.wait(START_TIMEOUT), f"the sensor never reached MongoDB: {pod.tail()}"
            assert tick.poll() is None, tick.stdout.read()
            seconds, status = pod.terminate()
            tick_output = tick.communicate(timeout=GRACE)[0]
        finally:
            tick.kill()
    print(f"\ncode-server under tini, a sensor tick waiting on an unanswering MongoDB: exited {seconds:.1f} s after "
          f"SIGTERM, status {status}")
    assert seconds < GRACE
    assert status == 0, pod.tail()
    # The tick gave up on MongoDB (the next tick tries again) instead of holding the server.
    assert "ServerSelectionTimeoutError" in tick_output, tick_output


def _error_classes(error) -> list[str]:
    """The exception classes of a serialized error and of everything it was caused by."""
    classes = []
    while error is not None:
        classes.append(error.cls_name)
        error = error.cause or error.context
    return classes


def test_a_run_worker_as_pid_1_stops_on_sigterm_mid_step_and_its_run_is_retried(production_home, unanswering, tmp_path):
    """`dagster api execute_run` exactly as the K8sRunLauncher's Job runs it, on runs it launched, signalled
    once the run's step has connected to MongoDB (which never answers here), as a pod being evicted or drained is.

    Dagster retries a step with a RetryPolicy that was interrupted, so the run went on until the kubelet's
    SIGKILL. Now the step fails at once without a step retry, the worker exits within the grace period, and
    the run is marked for the daemon's run retry (Dagster's own `dagster/will_retry`), like a run whose
    process died.
    """
    home, api = production_home
    env = {**os.environ, "DAGSTER_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "MONGODB_URI": f"mongodb://127.0.0.1:{unanswering.port}/"}
    # (init, terminated from the UI): evicted without an init and under tini; the UI's Terminate, under tini.
    cases = [(False, False), (True, False), (True, True)]
    partitions = [f"{shard:02d}|{LAST_WEEK}" for shard in range(len(cases))]
    with DagsterInstance.from_config(str(home)) as instance, CodeServer(helm_values(), env) as server:
        workspace_file = server.workspace_file(tmp_path / "workspace.yaml")
        with wait_for_location(instance, workspace_file) as context:
            backfill = subprocess.run(
                ["dagster", "job", "backfill", "-w", str(workspace_file), "-l", LOCATION, "-j", "weekly_reports_job",
                 "--partitions", ",".join(partitions), "--noprompt"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
            assert backfill.returncode == 0, backfill.stderr[-3000:]
            for run in instance.get_runs(RunsFilter(job_name="weekly_reports_job")):
                instance.launch_run(run.run_id, context.create_request_context())

    assert len(api.jobs) == len(partitions)
    for (init, terminated), (_, job) in zip(cases, api.jobs):
        [container] = job["spec"]["template"]["spec"]["containers"]
        assert "command" not in container  # its args follow the image's ENTRYPOINT: tini
        run_id = job["metadata"]["labels"]["dagster/run-id"]
        pod_env = {**env, **{e["name"]: e["value"] for e in container["env"] if "value" in e}, "DAGSTER_HOME": str(home)}
        unanswering.reached.clear()
        with Pod(container["args"], init=init, env=pod_env, log=tmp_path / f"run-{run_id}.log") as pod:
            # Its first call to MongoDB is when the step is surely under way, however slowly the pod started.
            assert unanswering.reached.wait(START_TIMEOUT), f"the step never reached MongoDB: {pod.tail()}"
            if terminated:  # what K8sRunLauncher.terminate does: mark the run canceling, then delete the Job
                instance.report_run_canceling(instance.get_run_by_id(run_id))
            seconds, status = pod.wait_gone(pod.sigterm())
        run = instance.get_run_by_id(run_id)
        name = f"run worker as PID 1{' under tini' if init else ''}{', terminated from the UI' if terminated else ''}"
        print(f"\n{name}: exited {seconds:.1f} s after SIGTERM, status {status}, run {run.status.value}, "
              f"will retry: {run.tags.get('dagster/will_retry')}")
        assert seconds < GRACE
        assert not instance.all_logs(run_id, of_type=DagsterEventType.STEP_RESTARTED), pod.tail()
        [failure] = instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
        assert "DagsterExecutionInterruptedError" in _error_classes(failure.dagster_event.event_specific_data.error)
        if terminated:  # canceled, as asked, and not retried
            assert run.status == DagsterRunStatus.CANCELED, pod.tail()
            assert run.tags.get("dagster/will_retry") != "true", run.tags
        else:
            assert run.status == DagsterRunStatus.FAILURE, pod.tail()
            assert run.tags.get("dagster/will_retry") == "true", run.tags  # what the daemon's run retry goes by

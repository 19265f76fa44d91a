"""The production deployment: the Job that the K8sRunLauncher creates, the Dockerfile, the Helm values.

No cluster: the launcher's own Kubernetes client sends the Job to a loopback HTTP server standing in for the
API server, which records the request body, i.e. the manifest exactly as a cluster would receive it. No helm:
helm_chart.py renders what the chart would from deploy/helm-values.yaml (the instance, the code server).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._config import process_config, resolve_to_config_type
from dagster._core.instance.config import dagster_instance_config
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._serdes.config_class import ConfigurableClassData, class_from_code_pointer
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job

from reporting_pipeline.local.embedded import free_port
from reporting_pipeline.services import mongo
from reporting_pipeline.services.objectstore import ensure_bucket

from . import helm_chart
from .conftest import LAST_WEEK, seeded_wire_server

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
LOCATION = "reporting-pipeline"  # the chart names a location after its user deployment

# What the webserver and daemon pods have in their environment: the chart's (and, for dagster.yaml,
# what its variables stand for in the chart's release), the Secret's password, ConfigMap reporting-pipeline-env.
PRODUCTION_ENV = {
    **helm_chart.chart_environment(yaml.safe_load((DEPLOY / "helm-values.yaml").read_text())),
    "DAGSTER_PG_PASSWORD": "not-used-here",
    "DAGSTER_COMPUTE_LOGS_BUCKET": "reporting-dagster-logs",
    "DAGSTER_COMPUTE_LOGS_PREFIX": "compute-logs",
}
K8S_VERSION = "1.31"  # the manifests' schema: a Kubernetes version the project supports
RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def production_config() -> dict:
    return yaml.safe_load((ROOT / "dagster.yaml").read_text())


def helm_values() -> dict:
    return yaml.safe_load((DEPLOY / "helm-values.yaml").read_text())


def user_deployment() -> dict:
    [deployment] = helm_values()["dagster-user-deployments"]["deployments"]
    return deployment


def image_of(deployment: dict) -> str:
    return helm_chart.image_name(deployment["image"])


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


class KubeApiRecorder:
    """A loopback stand-in for the Kubernetes API server: records each Job created and answers 201."""

    def __init__(self):
        self.jobs: list[tuple[str, dict]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                match = re.fullmatch(r"/apis/batch/v1/namespaces/([^/]+)/jobs", self.path.split("?")[0])
                if not match:
                    return self._answer(404, {"kind": "Status", "status": "Failure", "code": 404})
                recorder.jobs.append((match.group(1), body))
                self._answer(201, body)

            def _answer(self, code: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, path: Path) -> Path:
        return self.kubeconfig_for(self.url, path)

    @staticmethod
    def kubeconfig_for(url: str, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": url}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        }))
        return path


class Kubelet:
    """Starts a pod's container on this machine as a kubelet would, as far as this machine can: with the pod's
    environment only (ConfigMaps and Secrets resolved, the image's ENV), a read-only root filesystem (a private
    mount namespace with / remounted read-only) and its emptyDir volumes (tmpfs). Not runAsUser: this machine's
    Python lives under /root. `writable` host paths stand in for what a pod reaches over the network (the run
    storage, PostgreSQL in production)."""

    IMAGE_DIRS = ("/opt/dagster/dagster_home", "/opt/dagster/app")  # the Dockerfile's, empty here

    def __init__(self, config_maps: dict, secrets: dict, writable: list[Path]):
        self.config_maps, self.secrets, self.writable = config_maps, secrets, writable

    @staticmethod
    def unavailable() -> str | None:
        """Why pods cannot be started here, or None."""
        if not sys.platform.startswith("linux") or os.geteuid() != 0:
            return "needs root on Linux (mount namespaces)"
        probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount --bind / / && mount -o remount,bind,ro /"],
                               capture_output=True, check=False)
        return None if probe.returncode == 0 else f"cannot remount / read-only: {probe.stderr.decode()[-300:]}"

    def environment(self, container: dict) -> dict:
        image = dict(item.split("=", 1) for name, args in dockerfile() if name == "ENV" for item in shlex.split(args))
        # Where the image has the package and `dagster`: this checkout and its virtualenv.
        env = {**image, "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
        for source in container.get("envFrom") or []:  # env overrides envFrom, as in Kubernetes
            kind, ref = next(iter(source.items()))
            data = (self.config_maps if kind == "configMapRef" else self.secrets).get(ref["name"])
            assert data is not None or ref.get("optional"), f"{ref['name']} is missing: the pod would not start"
            env.update(data or {})
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = self.secrets[ref["name"]][ref["key"]]
        return env

    def wrap(self, pod_spec: dict, container: dict, argv: list[str]) -> list[str]:
        """`argv` in a mount namespace of its own laid out as the pod's filesystem."""
        q = shlex.quote
        mounts = container.get("volumeMounts") or []
        # This checkout and its virtualenv stand in for the image's code and Python. A checkout under a
        # volume's path (a clone in /tmp) would vanish under the emptyDir: it is set aside first and put
        # back, read-only, on top of it.
        image = [p for p in sorted({ROOT, Path(sys.prefix).resolve()}) if any(
            p.is_relative_to(m["mountPath"]) for m in mounts)]
        image = [p for p in image if not any(p != o and p.is_relative_to(o) for o in image)]
        steps = ["mount --bind / /", *(f"mount --bind {q(str(p))} {q(str(p))}" for p in self.writable),
                 "mount -t tmpfs -o mode=0755 tmpfs /opt", *(f"mkdir -p {d}" for d in self.IMAGE_DIRS),
                 *(f"mkdir -p /opt/.image/{n} && mount --bind {q(str(p))} /opt/.image/{n}" for n, p in enumerate(image)),
                 "mount -o remount,ro /opt"]
        if (container.get("securityContext") or {}).get("readOnlyRootFilesystem"):
            steps.append("mount -o remount,bind,ro /")
        volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
        for mount in mounts:
            volume = volumes[mount["name"]]
            assert set(volume) == {"name", "emptyDir"}, f"only emptyDir volumes here: {volume}"
            size = volume["emptyDir"].get("sizeLimit", "")
            options = f"-o size={size.lower().removesuffix('i')} " if size else ""  # 1Gi -> 1g
            steps.append(f"mount -t tmpfs {options}tmpfs {q(mount['mountPath'])}")
        steps += [f"mkdir -p {q(str(p))} && mount --bind /opt/.image/{n} {q(str(p))} && "
                  f"mount -o remount,bind,ro {q(str(p))}" for n, p in enumerate(image)]
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(steps) + ' && exec "$@"',
                "pod", *argv]

    def run(self, pod: dict, timeout: float) -> subprocess.CompletedProcess:
        [container] = pod["spec"]["containers"]
        return subprocess.run(self.wrap(pod["spec"], container, container["args"]), cwd=ROOT,
                              env=self.environment(container), capture_output=True, text=True, timeout=timeout,
                              check=False)


class CodeServer:
    """The user deployment's code server as the chart starts it: the args and the literal environment of the
    Deployment it renders (DAGSTER_CURRENT_IMAGE; DAGSTER_CONTAINER_CONTEXT if runs are to get its config)."""

    def __init__(self, values: dict, env: dict, kubelet: Kubelet | None = None):
        pod = helm_chart.code_server_deployment(values)["spec"]["template"]
        [container] = pod["spec"]["containers"]
        self.port = free_port()
        command, host_port = container["args"][:3], container["args"][3:7]
        assert command == ["dagster", "code-server", "start"] and host_port[0] == "-h" and host_port[2] == "-p"
        self.argv = [str(BIN / "dagster"), *command[1:], "-h", "127.0.0.1", "-p", str(self.port),
                     *container["args"][7:]]
        self.env = {**env, **{e["name"]: e["value"] for e in container["env"] if "value" in e}}
        if kubelet:  # the whole pod spec applies: its environment only, a read-only root
            self.env = kubelet.environment(container)
            self.argv = kubelet.wrap(pod["spec"], container, self.argv)
        self.process: subprocess.Popen | None = None

    def __enter__(self):
        self.process = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: only what it started
            self.process.wait()

    def workspace_file(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({"load_from": [{"grpc_server": {
            "host": "127.0.0.1", "port": self.port, "location_name": LOCATION}}]}))
        return path


def wait_for_location(instance, workspace_file: Path, timeout: float = 120):
    """A workspace on the code server once it has loaded the definitions."""
    deadline = time.monotonic() + timeout
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "could not reach user code server" until it listens
            context = WorkspaceProcessContext(instance, WorkspaceFileTarget([str(workspace_file)]))
        error = context.create_request_context().get_code_location_error(LOCATION)
        if error is None:
            return context
        context.__exit__(None, None, None)  # not loaded yet: drop this one and ask again
        if time.monotonic() > deadline:
            raise AssertionError(f"code server did not load: {error.message}")
        time.sleep(1)


def instance_home(config: dict, home: Path, storage: Path, kubeconfig: Path) -> Path:
    """A DAGSTER_HOME with this instance config: only storage (SQLite) and the kubeconfig differ."""
    config = {k: v for k, v in config.items() if k not in ("storage", "run_storage", "event_log_storage",
                                                          "schedule_storage")}
    config["storage"] = {"sqlite": {"base_dir": str(storage)}}
    launcher = config["run_launcher"]["config"]
    launcher["load_incluster_config"] = False
    launcher["kubeconfig_file"] = str(kubeconfig)
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


@pytest.fixture
def production_home(tmp_path, monkeypatch):
    """A DAGSTER_HOME with production's instance, the one the chart renders from the Helm values."""
    for key, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(key, value)
    with KubeApiRecorder() as api:
        home = instance_home(helm_chart.chart_instance(helm_values()), tmp_path / "home", tmp_path / "storage",
                             api.kubeconfig(tmp_path / "kubeconfig"))
        yield home, api


def launch_partition_run(values: dict, home: Path, tmp_path: Path, partition: str,
                         kubelet: Kubelet | None = None) -> DagsterRun:
    """A partition run launched as in production: queued by an operator's backfill (the public CLI) against
    the code server the chart starts, then handed to the launcher as the daemon's run queue does."""
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    with DagsterInstance.from_config(str(home)) as instance, CodeServer(values, env, kubelet) as server:
        assert isinstance(instance.run_launcher, K8sRunLauncher)
        workspace_file = server.workspace_file(tmp_path / "workspace.yaml")
        with wait_for_location(instance, workspace_file) as context:
            backfill = subprocess.run(
                [str(BIN / "dagster"), "job", "backfill", "-w", str(workspace_file), "-l", LOCATION,
                 "-j", "weekly_reports_job", "--partitions", partition, "--noprompt"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
            )
            assert backfill.returncode == 0, backfill.stderr[-3000:]
            [run] = instance.get_runs(RunsFilter(job_name="weekly_reports_job"))
            assert run.status == DagsterRunStatus.QUEUED and run.tags["dagster/partition"] == partition
            instance.launch_run(run.run_id, context.create_request_context())
        return instance.get_run_by_id(run.run_id)


def validate_manifest(manifest: dict):
    """Schema validation as `kubernetes-validate --strict` does it: unknown fields are errors too."""
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_k8s_run_launcher_creates_the_job_we_expect_for_a_partition_run(production_home, tmp_path):
    home, api = production_home
    values = helm_values()
    deployment = user_deployment()
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    partition = f"00|{LAST_WEEK}"

    run = launch_partition_run(values, home, tmp_path, partition)
    assert run.status == DagsterRunStatus.STARTING
    assert run.tags["dagster/image"] == image_of(deployment)

    [(namespace, job)] = api.jobs
    pod = job["spec"]["template"]
    [container] = pod["spec"]["containers"]
    shown = json.loads(json.dumps(job).replace(run.run_id, "<run-id>"))
    shown["spec"]["template"]["spec"]["containers"][0]["args"][3:] = ["<ExecuteRunArgs JSON>"]
    print(f"\nJob for partition {run.tags['dagster/partition']} in namespace {namespace}:\n"
          + yaml.safe_dump(shown, sort_keys=False))

    assert namespace == helm_chart.NAMESPACE
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    assert job["metadata"]["name"] == f"dagster-run-{run.run_id}"
    assert job["spec"]["backoffLimit"] == 0  # a failed pod is not re-run by Kubernetes: run retries decide
    assert pod["spec"]["restartPolicy"] == "Never"
    validate_manifest(job)

    # Runs hold the secrets: their own service account (no Role), not the chart's `dagster` one, no API token.
    assert pod["spec"]["serviceAccountName"] == "reporting-runs" != helm_chart.service_account_name(values)
    assert pod["spec"]["automountServiceAccountToken"] is False

    # The image is the code server's (DAGSTER_CURRENT_IMAGE), pinned by digest: dagster.yaml needs no job_image.
    assert container["image"] == image_of(deployment)
    assert re.fullmatch(r"[^@]+:[\w.-]+@sha256:[0-9a-f]{64}", container["image"])
    assert container["args"][:3] == ["dagster", "api", "execute_run"]
    assert "command" not in container  # so the args run under the image's ENTRYPOINT, tini
    # Sized as the launcher says (benchmarks/results.json), not as the code server is.
    assert container["resources"] == launcher["runK8sConfig"]["containerConfig"]["resources"] == {
        "requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1536Mi"}}

    # Pod Security Standard `restricted`, with /tmp the only writable path.
    assert helm_chart.restricted_violations(pod) == []
    assert container["securityContext"].items() >= RESTRICTED.items()
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["spec"]["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]

    assert container["envFrom"] == [{"configMapRef": {"name": c["name"]}} for c in launcher["envConfigMaps"]] + [
        {"secretRef": {"name": s["name"]}} for s in launcher["envSecrets"]]
    env_vars = {e["name"]: e for e in container["env"]}
    assert env_vars["DAGSTER_HOME"]["value"] == values["global"]["dagsterHome"]
    assert env_vars["DAGSTER_RUN_JOB_NAME"]["value"] == "weekly_reports_job"
    assert env_vars["DAGSTER_DISABLE_TELEMETRY"]["value"] == "true"
    assert env_vars["DAGSTER_PG_PASSWORD"]["valueFrom"] == {"secretKeyRef": {
        "name": values["global"]["postgresqlSecretName"], "key": "postgresql-password"}}

    for labels in (job["metadata"]["labels"], pod["metadata"]["labels"]):
        assert labels["dagster/job"] == "weekly_reports_job"
        assert labels["dagster/run-id"] == run.run_id
        assert labels["dagster/code-location"] == LOCATION
        assert labels["app.kubernetes.io/component"] == "run_worker"
        # Cost allocation.
        assert labels.items() >= {"app.kubernetes.io/part-of": "reporting-pipeline",
                                  "cost-center": "clinical-reporting"}.items() == launcher["labels"].items()


def test_runs_getting_the_code_servers_config_would_be_sized_and_privileged_as_the_code_server(
        production_home, tmp_path):
    """Why includeConfigInLaunchedRuns is off: on, the chart hands the code server's container context to
    every run, and Dagster lays it over the launcher's run config. This reproduces what production saw."""
    home, api = production_home
    values = helm_values()
    values["dagster-user-deployments"]["deployments"][0]["includeConfigInLaunchedRuns"] = {"enabled": True}

    launch_partition_run(values, home, tmp_path, f"01|{LAST_WEEK}")

    [(_, job)] = api.jobs
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"},
                                      "limits": {"cpu": "2", "memory": "1Gi"}}
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "reporting-code-server"
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is True


def client_process(port: int) -> int | None:
    """The process holding the loopback TCP connection whose own end is `port`: the client of a request."""
    inodes = {line.split()[9] for table in ("/proc/net/tcp", "/proc/net/tcp6") if Path(table).exists()
              for line in Path(table).read_text().splitlines()[1:]
              if int(line.split()[1].rsplit(":", 1)[1], 16) == port}
    sockets = {f"socket:[{inode}]" for inode in inodes}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in sockets for fd in os.listdir(f"/proc/{pid}/fd")):
                return int(pid)
        except OSError:
            continue  # gone, or a descriptor closed meanwhile
    return None


def _proc(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    return int(_proc(pid, "status").split("PPid:")[1].split()[0])


class WorkerWatch:
    """Wraps an S3 stand-in's WSGI app: each process downloading a participant file (waiting for this very answer,
    so surely alive) is looked at once as the kernel sees it: its parent, its grandparent, what it has mapped."""

    def __init__(self, app):
        self.app, self.seen, self.lock = app, {}, threading.Lock()

    def __call__(self, environ, start_response):
        if environ["REQUEST_METHOD"] == "GET" and "/files/" in environ.get("PATH_INFO", ""):
            with self.lock:
                pid = client_process(int(environ["REMOTE_PORT"]))
                if pid is not None and pid not in self.seen:
                    parent = _parent(pid)
                    grandparent = _parent(parent)
                    self.seen[pid] = {"parent": _proc(parent, "cmdline"), "run": _proc(grandparent, "cmdline"),
                                      "maps": _proc(pid, "maps")}
        return self.app(environ, start_response)

    def workers(self) -> list[dict]:
        """The processes seen that a run's forkserver started."""
        return [p for p in self.seen.values() if "multiprocessing.forkserver" in p["parent"]]


@pytest.mark.skipif(bool(Kubelet.unavailable()), reason=str(Kubelet.unavailable()))
@pytest.mark.skipif(sys.version_info < (3, 13), reason="mongoeco's wire server needs Python >= 3.13")
def test_code_server_and_run_pod_work_on_a_read_only_root_filesystem(pipeline, tmp_path, monkeypatch):
    """The code server's pod and the run's Job, started as their specs say: only /tmp is writable. The run
    renders and stores the shard's reports with its worker processes and its step logs reach S3.

    The Job runs `dagster api execute_run`, a script whose first line imports Dagster's CLI. multiprocessing has
    each worker run the parent's main script first: every worker imported all of Dagster (over a CPU-second
    and 45 MiB each), which only a worker caught in the act shows."""
    from reporting_pipeline.local.embedded import S3Server
    from reporting_pipeline.services.objectstore import make_client

    values = helm_values()
    logs_bucket = f"{pipeline.bucket}-logs"
    secret_names = {"MONGODB_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "SMTP_USERNAME", "SMTP_PASSWORD"}
    # The run storage stands in for PostgreSQL: outside /tmp, which the pods mount over.
    storage = Path(tempfile.mkdtemp(prefix="reporting-run-storage-", dir="/var/tmp"))
    try:
        with S3Server() as s3_server, seeded_wire_server(
                make_client(s3_server.endpoint_url), pipeline.bucket, pipeline.encryption, subscribers=6, weeks=2) as (
                wire, subscription_ids), KubeApiRecorder() as api:
            s3 = make_client(s3_server.endpoint_url)
            watch = s3_server.server.app = WorkerWatch(s3_server.server.app)
            db = mongo.connect(wire.uri)["reporting"]
            ensure_bucket(s3, logs_bucket)
            # A batch of 4 of the shard's 6: more than one batch, and enough for 2 workers, so the run starts them.
            config_map = {**{k: v for k, v in pipeline.env.items() if k not in secret_names}, "REPORT_SHARDS": "1",
                          "AWS_ENDPOINT_URL": s3_server.endpoint_url, "REPORT_BATCH_SIZE": "4",
                          "REPORT_WORKER_PROCESSES": "2",
                          "DAGSTER_COMPUTE_LOGS_BUCKET": logs_bucket, "DAGSTER_COMPUTE_LOGS_PREFIX": "compute-logs"}
            secret = {**{k: v for k, v in pipeline.env.items() if k in secret_names}, "MONGODB_URI": wire.uri}
            for key, value in {**config_map, **secret}.items():  # this process plays the daemon: same ConfigMap
                monkeypatch.setenv(key, value)
            kubelet = Kubelet(
                config_maps={"reporting-pipeline-env": config_map, **helm_chart.user_deployment_config_maps(values)},
                secrets={"reporting-pipeline-secrets": secret,
                         values["global"]["postgresqlSecretName"]: {"postgresql-password": "unused"}},
                writable=[storage])
            home = instance_home(helm_chart.chart_instance(values), tmp_path / "home", storage,
                                 api.kubeconfig(tmp_path / "kubeconfig"))

            run = launch_partition_run(values, home, tmp_path, f"00|{LAST_WEEK}", kubelet)
            [(_, job)] = api.jobs
            pod = kubelet.run(job["spec"]["template"], timeout=600)
            assert pod.returncode == 0, pod.stderr[-3000:]

            with DagsterInstance.from_config(str(home)) as instance:
                assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.SUCCESS
            assert db[mongo.REPORTS].count_documents({}) == len(subscription_ids)
            logs = [o["Key"] for o in s3.list_objects_v2(Bucket=logs_bucket).get("Contents", [])]
        assert logs and all(key.startswith("compute-logs/") for key in logs)
        assert "Read-only file system" not in pod.stderr

        workers = watch.workers()
        assert workers and all("execute_run" in worker["run"] for worker in workers), watch.seen
        for worker in workers:
            assert "_pydantic_core" not in worker["maps"], "a report worker loaded Dagster (pydantic_core is mapped)"
            assert "PIL/_imaging" in worker["maps"]  # what it does load: its thumbnails' and renderer's libraries
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def postgres_driver_error(scheme: str) -> str | None:
    """Why SQLAlchemy cannot connect with this URL scheme here, or None when its DBAPI driver is installed."""
    from sqlalchemy.engine import make_url

    try:
        make_url(f"{scheme}://user@host/db").get_dialect().import_dbapi()
    except ImportError as error:
        return f"{scheme}:// needs {error.name}, which is not installed"
    return None


def test_production_storage_names_an_installed_postgres_driver():
    scheme = production_config()["storage"]["postgres"]["postgres_db"].get("scheme", "postgresql")
    assert postgres_driver_error(scheme) is None, postgres_driver_error(scheme)


def test_helm_postgres_scheme_names_an_installed_driver():
    scheme = helm_values()["postgresql"].get("postgresqlScheme", "postgresql")
    assert postgres_driver_error(scheme) is None, postgres_driver_error(scheme)


def resolved(section: dict) -> dict:
    """A pluggable section (module, class, config) as Dagster reads it: its class's schema, defaults filled in,
    environment variables resolved."""
    data = ConfigurableClassData(section["module"], section["class"], yaml.safe_dump(section.get("config") or {}))
    klass = class_from_code_pointer(data.module_name, data.class_name)  # dagster.core.* is dagster._core.*
    result = process_config(resolve_to_config_type(klass.config_type()), data.config_dict)
    assert result.success, result.errors
    return result.value


def job_built_by(launcher_section: dict, kubeconfig: Path) -> tuple[str, dict]:
    """The namespace and the Job a K8sRunLauncher with this config builds for a run: Dagster's own code."""
    config = {**resolved(launcher_section), "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    launcher = K8sRunLauncher.from_config_value(None, config)
    run = DagsterRun(job_name="weekly_reports_job", run_id="0" * 36)
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=True)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(job_image="image", run_launcher=launcher), args=["execute_run"],
        job_name="dagster-run", user_defined_k8s_config=context.run_k8s_config, component="run_worker")
    return context.namespace, job.to_dict()


def test_helm_values_mirror_dagster_yaml(tmp_path, monkeypatch):
    """dagster.yaml is the instance the chart renders from the values, section by section, as Dagster reads both;
    its environment variables stand for what the chart takes from its release."""
    values, config = helm_values(), production_config()
    chart = helm_chart.chart_instance(values)
    for key, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(key, value)

    # Nothing on one side only: dagster.yaml's `storage` is the chart's three storages.
    storages = ("run_storage", "event_log_storage", "schedule_storage")
    assert set(chart) - set(storages) == set(config) - {"storage"}

    postgres = resolved({"module": "dagster_postgres", "class": "DagsterPostgresStorage",
                         "config": config["storage"]["postgres"]})["postgres_db"]
    for name in storages:
        assert resolved(chart[name])["postgres_db"] == postgres
    assert postgres["params"] == {"sslmode": "require"} and postgres["hostname"] == values["postgresql"]["postgresqlHost"]

    for name in ("scheduler", "run_coordinator", "compute_logs"):
        assert (chart[name]["module"], chart[name]["class"]) == (config[name]["module"], config[name]["class"])
        assert resolved(chart[name]) == resolved(config[name]), name
    assert resolved(config["compute_logs"])["bucket"] == PRODUCTION_ENV["DAGSTER_COMPUTE_LOGS_BUCKET"]

    # The run launcher, by what it sends to Kubernetes.
    assert (chart["run_launcher"]["module"], chart["run_launcher"]["class"]) == ("dagster_k8s", "K8sRunLauncher")
    kubeconfig = KubeApiRecorder.kubeconfig_for("http://127.0.0.1:1", tmp_path / "kubeconfig")
    assert job_built_by(chart["run_launcher"], kubeconfig) == job_built_by(config["run_launcher"], kubeconfig)

    # Sections of fixed shape, as Dagster validates them.
    (tmp_path / "chart").mkdir()
    (tmp_path / "chart" / "dagster.yaml").write_text(yaml.safe_dump(chart))
    from_chart, _ = dagster_instance_config(str(tmp_path / "chart"), "dagster.yaml")
    from_file, _ = dagster_instance_config(str(ROOT), "dagster.yaml")
    for name in ("retention", "sensors", "schedules", "run_retries", "run_monitoring", "telemetry"):
        assert from_chart[name] == from_file[name], name

    # The chart renders neither retry_on_asset_or_op_failure nor max_runtime_seconds: both sections come
    # verbatim from additionalInstanceConfig, and the chart's own (partial) blocks are off.
    assert not values["dagsterDaemon"]["runRetries"]["enabled"] and not values["dagsterDaemon"]["runMonitoring"]["enabled"]
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False

    # The code server evaluates sensors and schedules with the runs' settings.
    deployment = user_deployment()
    assert deployment["codeServerArgs"] == ["-m", "reporting_pipeline.defs.definitions"]
    assert deployment["envConfigMaps"] == values["runLauncher"]["config"]["k8sRunLauncher"]["envConfigMaps"]
    assert deployment["envSecrets"] == values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"]


def test_helm_rendered_instance_passes_dagsters_validation(tmp_path):
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(helm_chart.chart_instance(helm_values())))
    validated, _ = dagster_instance_config(str(tmp_path), "dagster.yaml")
    assert validated["run_monitoring"]["max_runtime_seconds"] == 14400
    assert validated["run_retries"]["retry_on_asset_or_op_failure"] is False
    assert validated["compute_logs"]["class"] == "S3ComputeLogManager"
    assert validated["retention"]["sensor"]["purge_after_days"]["skipped"] == 1


def test_code_server_deployment_meets_the_restricted_pod_security_standard():
    values = helm_values()
    deployment = helm_chart.code_server_deployment(values)
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    print("\nCode server Deployment (as the chart renders it):\n" + yaml.safe_dump(deployment, sort_keys=False))

    validate_manifest(deployment)
    assert helm_chart.restricted_violations(pod) == []
    assert container["securityContext"].items() >= RESTRICTED.items()
    # Writable: /tmp, and DAGSTER_HOME, where the code server makes an instance of its own on start
    # (test_code_server_and_run_pod_work_on_a_read_only_root_filesystem fails without it).
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"},
                                         {"name": "dagster-home", "mountPath": values["global"]["dagsterHome"]}]
    assert all(set(v) == {"name", "emptyDir"} for v in pod["spec"]["volumes"])
    # Its service account has no Role (the daemon, not the code server, starts runs) and is not the runs'.
    assert pod["spec"]["serviceAccountName"] == "reporting-code-server"
    assert values["dagster-user-deployments"]["rbacEnabled"] is False
    # Nothing of it is handed to runs: no container context.
    assert "DAGSTER_CONTAINER_CONTEXT" not in {e["name"] for e in container["env"]}
    assert pod["metadata"]["labels"].items() >= {"cost-center": "clinical-reporting"}.items()


def test_every_dagster_pod_requests_cpu_and_memory_and_has_a_memory_limit():
    values = helm_values()
    runs = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]["resources"]
    for name, resources in {"webserver": values["dagsterWebserver"]["resources"],
                            "daemon": values["dagsterDaemon"]["resources"],
                            "code server": user_deployment()["resources"], "runs": runs}.items():
        assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"], name


def test_run_service_account_has_no_token_and_is_the_one_runs_use():
    [account] = yaml.safe_load_all((DEPLOY / "run-service-account.yaml").read_text())
    validate_manifest(account)
    assert account["kind"] == "ServiceAccount" and account["automountServiceAccountToken"] is False
    pod_spec = helm_values()["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]
    assert account["metadata"]["name"] == pod_spec["serviceAccountName"]


def test_pod_security_checker_flags_what_the_restricted_profile_forbids():
    """The checker itself, on the code server's pod as it was before it was hardened, and on a few rules."""
    pod = helm_chart.code_server_deployment(helm_values())["spec"]["template"]
    pod["spec"]["securityContext"] = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001}
    pod["spec"]["containers"][0]["securityContext"] = {"allowPrivilegeEscalation": False}
    assert {v.split(":")[0] for v in helm_chart.restricted_violations(pod)} == {"Seccomp", "Capabilities"}

    pod["spec"]["hostNetwork"] = True
    pod["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/var/run"}})
    pod["spec"]["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": True, "runAsUser": 0, "capabilities": {"add": ["SYS_ADMIN"], "drop": ["ALL"]},
        "seccompProfile": {"type": "Unconfined"}}
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": 3030, "hostPort": 3030}]
    assert {v.split(":")[0] for v in helm_chart.restricted_violations(pod)} == {
        "Host namespaces", "HostPath volumes", "Volume types", "Privilege escalation", "Running as non-root user",
        "Capabilities (baseline)", "Capabilities", "Seccomp", "Host ports"}


def setup_py_pins() -> dict[str, str]:
    """The Dagster family's exact versions, as setup.py pins them."""
    return dict(re.findall(r'"(dagster(?:-[a-z0-9]+)?)==([0-9.]+)"', (ROOT / "setup.py").read_text()))


def test_dockerfile_builds_a_non_root_image_with_the_pinned_dagster_family():
    steps = dockerfile()
    instructions = [name for name, _ in steps]
    args = dict(reversed(steps))  # the first occurrence of each instruction
    # A patch release of .python-version's Python, on a named Debian release: no floating minor tag.
    python = re.escape((ROOT / ".python-version").read_text().strip())
    assert re.fullmatch(rf"python:{python}\.\d+-slim-bookworm(@sha256:[0-9a-f]{{64}})?", args["FROM"]), args["FROM"]

    user = [a for name, a in steps if name == "USER"][-1].split(":")[0]
    assert user not in ("root", "0") and instructions.index("USER") > max(
        i for i, (name, a) in enumerate(steps) if name == "RUN")  # nothing runs as root after it

    # Dependencies come from the lock only (hash-checked, no resolving), then the package without its
    # dependencies; the lock's own agreement with setup.py is test_image_lock_agrees_with_setup_py's.
    runs = [a for name, a in steps if name == "RUN"]
    installs = [" ".join(part.split()) for run in runs for part in run.split("&&") if "pip install" in part]
    assert installs == ["pip install --require-hashes --no-deps -r deploy/requirements.lock",
                        "pip install --no-deps ."], installs
    assert any("pip check" in run for run in runs)
    copies = [shlex.split(a) for name, a in steps if name == "COPY"]
    assert copies[0] == ["deploy/requirements.lock", "deploy/"]  # before the code: its own cached layer

    pins = setup_py_pins()
    assert {"dagster", "dagster-k8s", "dagster-postgres", "dagster-aws", "dagster-webserver"} <= set(pins)
    core = pins["dagster"].split(".")
    for name, version in pins.items():  # libraries are released as 0.(minor+16).patch alongside dagster
        major, minor, patch = version.split(".")
        expected = core if name in ("dagster", "dagster-webserver", "dagster-graphql") else \
            ["0", str(int(core[1]) + 16), core[2]]
        assert [major, minor, patch] == expected, f"{name}=={version} is not released with dagster=={pins['dagster']}"

    # tini as PID 1 (test_termination.py shows why): the chart and the launcher pass whole commands as args,
    # which follow the ENTRYPOINT.
    assert json.loads(args["ENTRYPOINT"]) == ["/usr/bin/tini", "--"]
    assert any(re.search(r"apt-get install [^&]*\btini\b", run) for run in runs)
    cmd = json.loads(args["CMD"])
    assert cmd[:3] == ["dagster", "code-server", "start"]
    assert cmd[cmd.index("-m"):] == user_deployment()["codeServerArgs"]
    assert f'"-p", "{user_deployment()["port"]}"' in args["CMD"] and "EXPOSE" in instructions


LOCK = DEPLOY / "requirements.lock"
# The image's platform: the lock is resolved for it, and its markers are read for it.
IMAGE_MARKERS = {"python_version": (ROOT / ".python-version").read_text().strip(), "sys_platform": "linux",
                 "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                 "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def setup_kwargs() -> dict:
    """What setup.py passes to setup(), read by running it with setup() replaced."""
    import runpy
    from unittest import mock

    import setuptools

    captured = {}
    with mock.patch.object(setuptools, "setup", lambda **kwargs: captured.update(kwargs)):
        runpy.run_path(str(ROOT / "setup.py"))
    return captured


def locked() -> dict[str, tuple[str, list[str]]]:
    """The lock's entries: canonical name -> (pinned version, sha256 hashes)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    entries = {}
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*", "", line).strip()
        if not line:
            continue
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})\b", line)
        requirement = re.sub(r"\s--hash=\S+", "", line).strip()
        assert not requirement.startswith("-"), f"an option in the lock, not a package: {line[:80]}"
        parsed = Requirement(requirement)
        [spec] = parsed.specifier
        assert spec.operator == "==" and not parsed.extras and parsed.marker is None, requirement
        assert canonicalize_name(parsed.name) not in entries, f"{parsed.name} is locked twice"
        entries[canonicalize_name(parsed.name)] = (spec.version, hashes)
    return entries


def test_image_lock_agrees_with_setup_py():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    header = LOCK.read_text().splitlines()[:6]
    assert f"# This file is autogenerated by pip-compile with Python {IMAGE_MARKERS['python_version']}" in header
    lock = locked()
    assert lock, "the lock is empty"
    for name, (version, hashes) in lock.items():
        assert hashes, f"{name}=={version} has no --hash=sha256: pip would refuse the whole file with --require-hashes"

    kwargs = setup_kwargs()
    for text in kwargs["install_requires"]:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(IMAGE_MARKERS):
            continue
        name = canonicalize_name(requirement.name)
        assert name in lock, f"setup.py requires {text}; the lock has no {requirement.name} (run make lock)"
        assert requirement.specifier.contains(lock[name][0], prereleases=True), \
            f"setup.py requires {text}; the lock has {lock[name][0]} (run make lock)"

    # The Dagster family exactly as setup.py pins it, and no other Dagster library than those and their own.
    dagster = {name: version for name, (version, _) in lock.items() if name.startswith("dagster")}
    pins = {canonicalize_name(name): version for name, version in setup_py_pins().items()}
    assert pins.items() <= dagster.items(), {n: (v, dagster.get(n)) for n, v in pins.items() if dagster.get(n) != v}
    assert set(dagster) - set(pins) <= {"dagster-pipes", "dagster-shared"}, set(dagster) - set(pins)
    assert {dagster[n] for n in set(dagster) - set(pins)} <= {pins["dagster"]}

    # No package the extras name (stand-ins, test tools) is in the image.
    extras = {canonicalize_name(Requirement(text).name) for texts in kwargs["extras_require"].values()
              for text in texts}
    assert not extras & set(lock), f"only the extras want these, yet they are locked: {sorted(extras & set(lock))}"
    assert not {"moto", "mongomock", "aiosmtpd", "mongoeco", "pytest"} & set(lock)


def pypi_unreachable() -> str | None:
    import socket

    try:
        socket.create_connection(("pypi.org", 443), timeout=10).close()
    except OSError as error:
        return f"PyPI is not reachable from here ({error})"
    return None


def test_image_lock_installs_from_pypi_with_its_hashes_and_holds_exactly_what_setup_py_needs(tmp_path):
    """pip on the image's Python resolves the lock against PyPI as the image build would, dependencies
    included and hashes required: a locked package's dependency missing from the lock (or unhashed) fails
    it. Then setup.py's requirements, followed through each locked package's metadata, reach exactly the
    locked packages: nothing missing (extras like pyjwt[crypto] included), nothing stale."""
    import platform

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    here = (sys.platform, platform.machine(), "%d.%d" % sys.version_info[:2])
    image = (IMAGE_MARKERS["sys_platform"], IMAGE_MARKERS["platform_machine"], IMAGE_MARKERS["python_version"])
    if here != image:
        pytest.skip(f"the lock is for Python {image[2]} on Linux x86_64; this is Python {here[2]} on {here[0]} {here[1]}")
    if reason := pypi_unreachable():
        pytest.skip(reason)
    # PyPI alone, as in the image: no local indexes or wheel folders from pip's configuration here.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX", "PIP_CONSTRAINT")}
    env["PIP_CONFIG_FILE"] = os.devnull
    report_file = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--require-hashes",
         "--index-url", "https://pypi.org/simple", "-r", str(LOCK), "--report", str(report_file)],
        env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_file.read_text())
    picked = {canonicalize_name(item["metadata"]["name"]): item for item in report["install"]}

    lock = locked()
    assert picked.keys() == lock.keys()
    for name, item in picked.items():
        version, hashes = lock[name]
        assert item["metadata"]["version"] == version
        assert item["download_info"]["archive_info"]["hashes"]["sha256"] in hashes, f"{name}: file not in the lock"
    # The slim image has no compiler: wheels only, but for pure-Python projects that publish no wheel.
    sources = {name for name, item in picked.items() if not item["download_info"]["url"].endswith(".whl")}
    assert sources <= {"dkimpy"}, f"would be built from source in the image: {sorted(sources)}"

    def active(requirement: Requirement, extras: set[str]) -> bool:
        return requirement.marker is None or any(
            requirement.marker.evaluate({**report["environment"], "extra": extra}) for extra in extras)

    reached: dict[str, set[str]] = {}  # package -> the extras asked of it ("" = none)
    todo = [Requirement(text) for text in setup_kwargs()["install_requires"]]
    todo = [requirement for requirement in todo if active(requirement, {""})]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        assert name in picked, f"{requirement} is needed but not locked (run make lock)"
        version = picked[name]["metadata"]["version"]
        assert requirement.specifier.contains(version, prereleases=True), f"{requirement} is needed; locked {version}"
        extras = {""} | {canonicalize_name(extra) for extra in requirement.extras}
        if extras <= reached.get(name, set()):
            continue
        reached[name] = reached.get(name, set()) | extras
        todo += [dependency for dependency in map(Requirement, picked[name]["metadata"].get("requires_dist", []))
                 if active(dependency, reached[name])]
    assert set(reached) == set(picked), f"locked but not needed by setup.py: {sorted(set(picked) - set(reached))}"

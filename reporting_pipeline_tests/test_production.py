"""The production deployment: the Job that dagster.yaml's K8sRunLauncher creates, the Dockerfile, the Helm values.

No cluster: the launcher's own Kubernetes client sends the Job to a loopback HTTP server standing in for the
API server, which records the request body, i.e. the manifest exactly as a cluster would receive it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.instance.config import dagster_instance_config
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster_k8s import K8sRunLauncher

from reporting_pipeline.local.embedded import free_port

from .conftest import LAST_WEEK

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
LOCATION = "reporting-pipeline"  # the chart names a location after its user deployment

# What the webserver and daemon pods would have in their environment.
PRODUCTION_ENV = {
    "DAGSTER_PG_HOST": "postgres.example.internal",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "not-used-here",
    "DAGSTER_K8S_SERVICE_ACCOUNT": "reporting-runs",
    "DAGSTER_K8S_NAMESPACE": "reporting",
    "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "dagster-instance",
    "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql-secret",
    "DAGSTER_HOME": "/opt/dagster/dagster_home",
}


def production_config() -> dict:
    return yaml.safe_load((ROOT / "dagster.yaml").read_text())


def helm_values() -> dict:
    return yaml.safe_load((DEPLOY / "helm-values.yaml").read_text())


def user_deployment() -> dict:
    [deployment] = helm_values()["dagster-user-deployments"]["deployments"]
    return deployment


def image_of(deployment: dict) -> str:
    return f"{deployment['image']['repository']}:{deployment['image']['tag']}"


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def snake(key: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


def snake_keys(value):
    """The chart's camelCase k8s config as dagster-k8s's snake_case config (Kubernetes resources keep theirs)."""
    if isinstance(value, dict):
        return {snake(k): v if k == "resources" else snake_keys(v) for k, v in value.items()}
    return value


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
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        }))
        return path


class CodeServer:
    """The user deployment's code server as the chart starts it: its args, DAGSTER_CURRENT_IMAGE set to the image."""

    def __init__(self, deployment: dict, env: dict):
        self.port = free_port()
        self.argv = [str(BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1", "-p", str(self.port),
                     *deployment["codeServerArgs"]]
        self.env = {**env, "DAGSTER_CURRENT_IMAGE": image_of(deployment)}
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


@pytest.fixture
def production_home(tmp_path, monkeypatch):
    """A DAGSTER_HOME with the production dagster.yaml: only storage (SQLite) and the kubeconfig differ."""
    for key, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(key, value)
    with KubeApiRecorder() as api:
        config = production_config()
        config["storage"] = {"sqlite": {"base_dir": str(tmp_path / "storage")}}
        launcher = config["run_launcher"]["config"]
        launcher["load_incluster_config"] = False
        launcher["kubeconfig_file"] = str(api.kubeconfig(tmp_path / "kubeconfig"))
        home = tmp_path / "home"
        home.mkdir()
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        yield home, api


def test_k8s_run_launcher_creates_the_job_we_expect_for_a_partition_run(production_home, tmp_path):
    home, api = production_home
    deployment = user_deployment()
    expected = production_config()["run_launcher"]["config"]
    env = {**os.environ, "DAGSTER_HOME": str(home)}

    with DagsterInstance.from_config(str(home)) as instance, CodeServer(deployment, env) as server:
        assert isinstance(instance.run_launcher, K8sRunLauncher)
        workspace_file = server.workspace_file(tmp_path / "workspace.yaml")
        with wait_for_location(instance, workspace_file) as context:
            # An operator's backfill of one partition, through the public CLI: it lands in the run queue.
            partition = f"00|{LAST_WEEK}"
            backfill = subprocess.run(
                [str(BIN / "dagster"), "job", "backfill", "-w", str(workspace_file), "-l", LOCATION,
                 "-j", "weekly_reports_job", "--partitions", partition, "--noprompt"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
            )
            assert backfill.returncode == 0, backfill.stderr[-3000:]
            [run] = instance.get_runs(RunsFilter(job_name="weekly_reports_job"))
            assert run.status == DagsterRunStatus.QUEUED and run.tags["dagster/partition"] == partition
            # What the daemon's run queue does with a dequeued run.
            instance.launch_run(run.run_id, context.create_request_context())

        run = instance.get_run_by_id(run.run_id)
        assert run.status == DagsterRunStatus.STARTING
        assert run.tags["dagster/image"] == image_of(deployment)

    [(namespace, job)] = api.jobs
    pod = job["spec"]["template"]
    [container] = pod["spec"]["containers"]
    shown = json.loads(json.dumps(job).replace(run.run_id, "<run-id>"))
    shown["spec"]["template"]["spec"]["containers"][0]["args"][3:] = ["<ExecuteRunArgs JSON>"]
    print(f"\nJob for partition {run.tags['dagster/partition']} in namespace {namespace}:\n"
          + yaml.safe_dump(shown, sort_keys=False))

    assert namespace == PRODUCTION_ENV["DAGSTER_K8S_NAMESPACE"]
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    assert job["metadata"]["name"] == f"dagster-run-{run.run_id}"
    assert job["spec"]["backoffLimit"] == 0  # a failed pod is not re-run by Kubernetes: run retries decide
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["serviceAccountName"] == PRODUCTION_ENV["DAGSTER_K8S_SERVICE_ACCOUNT"]

    # The image is the code server's (DAGSTER_CURRENT_IMAGE): dagster.yaml needs no job_image.
    assert container["image"] == image_of(deployment)
    assert container["args"][:3] == ["dagster", "api", "execute_run"]
    assert container["resources"] == expected["run_k8s_config"]["container_config"]["resources"]

    assert container["envFrom"] == [{"configMapRef": {"name": name}} for name in expected["env_config_maps"]] + [
        {"secretRef": {"name": name}} for name in expected["env_secrets"]]
    env_vars = {e["name"]: e for e in container["env"]}
    assert env_vars["DAGSTER_HOME"]["value"] == PRODUCTION_ENV["DAGSTER_HOME"]
    assert env_vars["DAGSTER_RUN_JOB_NAME"]["value"] == "weekly_reports_job"
    assert env_vars["DAGSTER_PG_PASSWORD"]["valueFrom"] == {"secretKeyRef": {
        "name": PRODUCTION_ENV["DAGSTER_K8S_PG_PASSWORD_SECRET"], "key": "postgresql-password"}}

    for labels in (job["metadata"]["labels"], pod["metadata"]["labels"]):
        assert labels["dagster/job"] == "weekly_reports_job"
        assert labels["dagster/run-id"] == run.run_id
        assert labels["dagster/code-location"] == LOCATION
        assert labels["app.kubernetes.io/component"] == "run_worker"
        assert labels.items() >= (expected.get("labels") or {}).items()


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


def test_helm_values_mirror_dagster_yaml():
    values, config = helm_values(), production_config()

    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    coordinator = config["run_coordinator"]["config"]
    assert values["dagsterDaemon"]["enabled"] and values["dagsterDaemon"]["runCoordinator"]["enabled"]
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == config["run_coordinator"]["class"]
    assert queued["maxConcurrentRuns"] == coordinator["max_concurrent_runs"]
    assert queued["tagConcurrencyLimits"] == coordinator["tag_concurrency_limits"]

    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    launcher = config["run_launcher"]["config"]
    assert values["runLauncher"]["type"] == config["run_launcher"]["class"]
    assert k8s["loadInclusterConfig"] == launcher["load_incluster_config"]
    assert [c["name"] for c in k8s["envConfigMaps"]] == launcher["env_config_maps"]
    assert [s["name"] for s in k8s["envSecrets"]] == launcher["env_secrets"]
    assert snake_keys(k8s["runK8sConfig"]) == launcher["run_k8s_config"]
    assert k8s.get("labels", {}) == launcher.get("labels", {})

    # The chart renders neither retry_on_asset_or_op_failure nor max_runtime_seconds: both sections come
    # verbatim from additionalInstanceConfig, and the chart's own (partial) blocks are off.
    extra = values["additionalInstanceConfig"]
    assert not values["dagsterDaemon"]["runRetries"]["enabled"] and not values["dagsterDaemon"]["runMonitoring"]["enabled"]
    assert extra == {"run_retries": config["run_retries"], "run_monitoring": config["run_monitoring"]}
    assert values["telemetry"] == config["telemetry"]

    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlHost"]
    assert values["generatePostgresqlPasswordSecret"] is False and values["global"]["postgresqlSecretName"]

    deployment = user_deployment()
    assert values["dagster-user-deployments"]["enabled"]
    assert deployment["codeServerArgs"] == ["-m", "reporting_pipeline.defs.definitions"]
    assert [c["name"] for c in deployment["envConfigMaps"]] == launcher["env_config_maps"]
    assert [s["name"] for s in deployment["envSecrets"]] == launcher["env_secrets"]
    assert deployment["image"]["tag"] not in ("", "latest")  # runs must get the code server's exact image
    assert deployment["podSecurityContext"]["runAsNonRoot"] is True


def test_helm_additional_instance_config_passes_dagsters_validation(tmp_path):
    config = {**production_config(), **helm_values()["additionalInstanceConfig"]}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    validated, _ = dagster_instance_config(str(tmp_path), "dagster.yaml")
    assert validated["run_monitoring"]["max_runtime_seconds"] == 14400
    assert validated["run_retries"]["retry_on_asset_or_op_failure"] is False


def test_dockerfile_builds_a_non_root_image_with_the_pinned_dagster_family():
    steps = dockerfile()
    instructions = [name for name, _ in steps]
    args = dict(reversed(steps))  # the first occurrence of each instruction
    assert args["FROM"] == f"python:{(ROOT / '.python-version').read_text().strip()}-slim"

    user = [a for name, a in steps if name == "USER"][-1].split(":")[0]
    assert user not in ("root", "0") and instructions.index("USER") > max(
        i for i, (name, a) in enumerate(steps) if name == "RUN")  # nothing runs as root after it

    # Dependencies come from this repository's setup.py, which pins the whole Dagster family.
    runs = " && ".join(a for name, a in steps if name == "RUN")
    assert re.search(r"pip install \.( |$)", runs) and "pip install --no-deps ." in runs
    assert not re.search(r"pip install [^&]*\bdagster", runs), "Dagster must come from setup.py's pins only"
    setup_py = (ROOT / "setup.py").read_text()
    pins = dict(re.findall(r'"(dagster(?:-[a-z0-9]+)?)==([0-9.]+)"', setup_py))
    assert {"dagster", "dagster-k8s", "dagster-postgres", "dagster-aws", "dagster-webserver"} <= set(pins)
    core = pins["dagster"].split(".")
    for name, version in pins.items():  # libraries are released as 0.(minor+16).patch alongside dagster
        major, minor, patch = version.split(".")
        expected = core if name in ("dagster", "dagster-webserver", "dagster-graphql") else \
            ["0", str(int(core[1]) + 16), core[2]]
        assert [major, minor, patch] == expected, f"{name}=={version} is not released with dagster=={pins['dagster']}"

    # No ENTRYPOINT: the chart and the launcher pass whole commands as args, which an ENTRYPOINT would prefix.
    assert "ENTRYPOINT" not in instructions
    cmd = json.loads(args["CMD"])
    assert cmd[:3] == ["dagster", "code-server", "start"]
    assert cmd[cmd.index("-m"):] == user_deployment()["codeServerArgs"]
    assert f'"-p", "{user_deployment()["port"]}"' in args["CMD"] and "EXPOSE" in instructions
    assert shlex.split(args["COPY"]) == ["setup.py", "./"]

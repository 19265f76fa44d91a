"""What the Dagster Helm chart 1.13.27 renders from deploy/helm-values.yaml, without helm (not installable here).

Each function mirrors one template of the chart (helm/dagster in the dagster-io/dagster repository) and names
it. They cover the values this project sets; a value they do not know raises NotImplementedError rather than
being rendered wrong. Also: a checker for the Kubernetes Pod Security Standard `restricted`.
"""

from __future__ import annotations

import copy
import json

CHART_VERSION = "1.13.27"
RELEASE = "dagster"  # `helm upgrade --install dagster ...` (deploy/README.md)
NAMESPACE = "reporting"

# The dagster-user-deployments subchart's own values.yaml defaults for the keys its templates read here.
USER_DEPLOYMENTS_DEFAULTS = {
    "dagsterHome": "/opt/dagster/dagster_home",
    "postgresqlSecretName": "dagster-postgresql-secret",
    "celeryConfigSecretName": "dagster-celery-config-secret",
    "imagePullSecrets": [],
    "serviceAccount": {"create": True, "name": "", "annotations": {}},
    "rbacEnabled": True,
}
DEPLOYMENT_DEFAULTS = {
    "readinessProbe": {"enabled": True, "periodSeconds": 20, "timeoutSeconds": 10, "successThreshold": 1,
                       "failureThreshold": 3},
}


def deep_merge(base: dict, override: dict) -> dict:
    """Helm's merge of a values file over a chart's defaults: maps merge, anything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def fullname(chart_name: str, values: dict) -> str:
    """templates/helpers/_helpers.tpl (both charts): "dagster.fullname"."""
    g = values.get("global") or {}
    override = g.get("fullnameOverride") or values.get("fullnameOverride")
    if override:
        return override[:63].rstrip("-")
    name = g.get("nameOverride") or values.get("nameOverride") or chart_name
    if name in RELEASE:  # sprig `contains $name .Release.Name`
        return RELEASE[:63].rstrip("-")
    return f"{RELEASE}-{name}"[:63].rstrip("-")


def image_name(image: dict) -> str:
    """templates/helpers/_helpers.tpl: "dagster.dagsterImage.name" (`repository:tag`, no separate digest)."""
    tag = str(image.get("tag") or CHART_VERSION).strip('"')
    return f"{image['repository']}:{tag}"


# --- the dagster-user-deployments subchart -----------------------------------------------------------------

def user_deployments_values(values: dict) -> dict:
    """The subchart's .Values: its defaults, the parent's `dagster-user-deployments` block, and `global`."""
    sub = deep_merge(USER_DEPLOYMENTS_DEFAULTS, values["dagster-user-deployments"])
    sub["global"] = values.get("global") or {}
    sub["deployments"] = [deep_merge(DEPLOYMENT_DEFAULTS, d) for d in sub["deployments"]]
    return sub


def user_deployments_service_account(sub: dict) -> str:
    """charts/dagster-user-deployments/templates/helpers/_helpers.tpl: "dagsterUserDeployments.serviceAccountName"."""
    return (sub["global"].get("serviceAccountName") or (sub.get("serviceAccount") or {}).get("name")
            or f"{fullname('dagster-user-deployments', sub)}-user-deployments")


def k8s_container_context(sub: dict, deployment: dict) -> dict:
    """charts/dagster-user-deployments/templates/helpers/_helpers.tpl: "dagsterUserDeployments.k8sContainerContext",
    the DAGSTER_CONTAINER_CONTEXT the code server passes on to every run launched from it."""
    name = fullname("dagster-user-deployments", sub)
    k8s: dict = {"image_pull_policy": deployment["image"]["pullPolicy"]}
    if sub.get("imagePullSecrets"):
        k8s["image_pull_secrets"] = sub["imagePullSecrets"]
    k8s["env_config_maps"] = [f"{name}-{deployment['name']}-user-env"] + [
        c["name"] for c in deployment.get("envConfigMaps") or [] if "name" in c]
    if deployment.get("envSecrets"):
        k8s["env_secrets"] = [s["name"] for s in deployment["envSecrets"] if "name" in s]
    for key, field in (("volumeMounts", "volume_mounts"), ("volumes", "volumes"), ("labels", "labels"),
                       ("resources", "resources"), ("schedulerName", "scheduler_name")):
        if deployment.get(key):
            k8s[field] = deployment[key]
    k8s["namespace"] = NAMESPACE
    k8s["service_account_name"] = user_deployments_service_account(sub)
    if isinstance(deployment.get("env"), list) and deployment["env"]:
        k8s["env"] = deployment["env"]
    pod_spec_config: dict = {"automount_service_account_token": True}
    if deployment.get("sidecarContainers"):
        pod_spec_config["containers"] = deployment["sidecarContainers"]
    if deployment.get("initContainers"):
        pod_spec_config["init_containers"] = deployment["initContainers"]
    k8s["run_k8s_config"] = {"pod_spec_config": pod_spec_config}
    if deployment.get("annotations"):
        k8s["run_k8s_config"]["pod_template_spec_metadata"] = {"annotations": deployment["annotations"]}
    return {"k8s": k8s}


def code_server_deployment(values: dict, deployment_name: str | None = None) -> dict:
    """charts/dagster-user-deployments/templates/deployment-user.yaml: the code server's Deployment.
    Keys rendered as null (`toYaml` of an unset value) are left out, as the API server stores them."""
    sub = user_deployments_values(values)
    [deployment] = [d for d in sub["deployments"] if deployment_name in (None, d["name"])]
    name = fullname("dagster-user-deployments", sub)
    image = image_name(deployment["image"])
    selector = {"app.kubernetes.io/name": "dagster-user-deployments", "app.kubernetes.io/instance": RELEASE,
                "component": "user-deployments", "deployment": deployment["name"]}

    env = [{"name": "DAGSTER_CURRENT_IMAGE", "value": image},
           {"name": "DAGSTER_PG_PASSWORD", "valueFrom": {"secretKeyRef": {
               "name": sub["global"].get("postgresqlSecretName") or sub["postgresqlSecretName"],
               "key": "postgresql-password"}}}]
    if (deployment.get("includeConfigInLaunchedRuns") or {"enabled": True}).get("enabled"):
        if deployment.get("dagsterApiGrpcArgs"):
            raise NotImplementedError("dagsterApiGrpcArgs (DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT)")
        env.append({"name": "DAGSTER_CONTAINER_CONTEXT",
                    "value": json.dumps(k8s_container_context(sub, deployment), separators=(",", ":"))})
    if isinstance(deployment.get("env"), list):
        env.extend(deployment["env"])

    env_from = [{"configMapRef": {"name": f"{name}-user-deployments-shared-env"}},
                {"configMapRef": {"name": f"{name}-{deployment['name']}-user-env"}},
                *({"configMapRef": c} for c in deployment.get("envConfigMaps") or []),
                *({"secretRef": s} for s in deployment.get("envSecrets") or [])]
    celery = sub["global"].get("celeryConfigSecretName") or sub.get("celeryConfigSecretName")
    if celery:
        env_from.append({"secretRef": {"name": celery, "optional": True}})

    if not deployment.get("codeServerArgs"):
        raise NotImplementedError("only codeServerArgs deployments are mirrored")
    container = {
        "name": "dagster-user-deployments",
        "securityContext": deployment.get("securityContext"),
        "imagePullPolicy": deployment["image"]["pullPolicy"],
        "image": image,
        "args": ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", str(deployment["port"]),
                 *deployment["codeServerArgs"]],
        "env": env,
        "envFrom": env_from,
        "resources": deployment.get("resources"),
    }
    probe = deployment.get("readinessProbe")
    if probe and probe.get("enabled") is not False:
        container["readinessProbe"] = probe if probe.get("exec") else {
            "exec": {"command": ["dagster", "api", "grpc-health-check", "-p", str(deployment["port"])]},
            **{k: v for k, v in probe.items() if k in (
                "initialDelaySeconds", "periodSeconds", "timeoutSeconds", "successThreshold", "failureThreshold")}}
    if deployment.get("livenessProbe") or deployment.get("startupProbe", {}).get("enabled"):
        raise NotImplementedError("liveness/startup probes")
    if deployment.get("volumeMounts"):
        container["volumeMounts"] = deployment["volumeMounts"]
    if deployment.get("sidecarContainers") or deployment.get("initContainers"):
        raise NotImplementedError("sidecar and init containers")

    service_account = deployment.get("serviceAccount") or {}
    pod_spec = {
        "imagePullSecrets": sub.get("imagePullSecrets"),
        "serviceAccountName": service_account["name"] if "name" in service_account
        else user_deployments_service_account(sub),
        "automountServiceAccountToken": True,
        "securityContext": deployment.get("podSecurityContext"),
        "containers": [container],
        "nodeSelector": deployment.get("nodeSelector"),
        "affinity": deployment.get("affinity"),
        "tolerations": deployment.get("tolerations"),
    }
    if deployment.get("volumes"):
        pod_spec["volumes"] = deployment["volumes"]
    if deployment.get("schedulerName"):
        pod_spec["schedulerName"] = deployment["schedulerName"]
    labels = {"helm.sh/chart": f"dagster-user-deployments-{CHART_VERSION}", **selector,
              "app.kubernetes.io/managed-by": "Helm", **(deployment.get("labels") or {})}
    return without_nulls({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{name}-{deployment['name']}", "namespace": NAMESPACE, "labels": labels,
                     "annotations": deployment.get("annotations")},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**selector, **(deployment.get("labels") or {})},
                             "annotations": deployment.get("annotations")},
                "spec": pod_spec,
            },
        },
    })


def without_nulls(value):
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


# --- the dagster chart's instance (ConfigMap dagster-instance) -----------------------------------------------

def service_account_name(values: dict) -> str:
    """templates/helpers/_helpers.tpl: "dagster.serviceAccountName" (the webserver's and daemon's)."""
    return ((values.get("global") or {}).get("serviceAccountName")
            or (values.get("serviceAccount") or {}).get("name") or fullname("dagster", values))


def postgresql_secret_name(values: dict) -> str:
    """templates/helpers/_helpers.tpl: "dagster.postgresql.secretName"."""
    return (values.get("global") or {}).get("postgresqlSecretName") or f"{fullname('dagster', values)}-postgresql-secret"


def string_source(value):
    """templates/helpers/instance/_compute-log-manager.tpl: "stringSource" (a string, or an {env: ...} map)."""
    if isinstance(value, (dict, str)):
        return value
    raise NotImplementedError(f"stringSource of {value!r}")


def postgres_config(values: dict) -> dict:
    """templates/helpers/instance/_postgresql.tpl: "dagsterYaml.postgresql.config"."""
    pg = values["postgresql"]
    if pg.get("enabled", True):
        raise NotImplementedError("the chart's own PostgreSQL")
    db = {"username": pg["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
          "hostname": pg["postgresqlHost"], "db_name": pg["postgresqlDatabase"], "port": pg["service"]["port"],
          "params": pg.get("postgresqlParams")}
    if pg.get("postgresqlScheme"):
        db["scheme"] = pg["postgresqlScheme"]
    return {"postgres_db": db}


def k8s_run_launcher(values: dict) -> dict:
    """templates/helpers/instance/_run-launcher.tpl: "dagsterYaml.runLauncher.k8s"."""
    if values["runLauncher"]["type"] != "K8sRunLauncher":
        raise NotImplementedError(values["runLauncher"]["type"])
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    config: dict = {"load_incluster_config": k8s["loadInclusterConfig"]}
    if k8s.get("kubeconfigFile"):
        config["kubeconfig_file"] = k8s["kubeconfigFile"]
    config["job_namespace"] = k8s.get("jobNamespace") or NAMESPACE
    config["image_pull_policy"] = k8s["imagePullPolicy"]
    if values.get("imagePullSecrets"):
        config["image_pull_secrets"] = values["imagePullSecrets"]
    config["service_account_name"] = service_account_name(values)
    if "image" in k8s:
        config["job_image"] = f"{k8s['image']['repository']}:{k8s['image']['tag']}"
    config["dagster_home"] = values["global"]["dagsterHome"]
    config["instance_config_map"] = f"{fullname('dagster', values)}-instance"
    config["postgres_password_secret"] = postgresql_secret_name(values)
    if k8s.get("envConfigMaps"):
        config["env_config_maps"] = [c["name"] for c in k8s["envConfigMaps"] if "name" in c]
    if k8s.get("envSecrets"):
        config["env_secrets"] = [s["name"] for s in k8s["envSecrets"] if "name" in s]
    for key, field in (("envVars", "env_vars"), ("volumeMounts", "volume_mounts"), ("volumes", "volumes"),
                       ("labels", "labels"), ("resources", "resources"), ("schedulerName", "scheduler_name"),
                       ("securityContext", "security_context")):
        if k8s.get(key):
            config[field] = k8s[key]
    if k8s.get("failPodOnRunFailure"):
        config["fail_pod_on_run_failure"] = True
    run_k8s = k8s.get("runK8sConfig")
    if run_k8s:
        config["run_k8s_config"] = {field: run_k8s[key] for key, field in (
            ("containerConfig", "container_config"), ("podSpecConfig", "pod_spec_config"),
            ("podTemplateSpecMetadata", "pod_template_spec_metadata"), ("jobSpecConfig", "job_spec_config"),
            ("jobMetadata", "job_metadata")) if run_k8s.get(key)}
    return {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config}


def s3_compute_log_manager(values: dict) -> dict:
    """templates/helpers/instance/_compute-log-manager.tpl: "dagsterYaml.computeLogManager.s3"."""
    s3 = values["computeLogManager"]["config"]["s3ComputeLogManager"]
    config: dict = {"bucket": string_source(s3["bucket"])}
    for key, field in (("localDir", "local_dir"), ("prefix", "prefix")):
        if s3.get(key):
            config[field] = string_source(s3[key])
    if s3.get("useSsl"):
        config["use_ssl"] = s3["useSsl"]
    config["verify"] = s3.get("verify") is not False
    for key, field in (("verifyCertPath", "verify_cert_path"), ("endpointUrl", "endpoint_url")):
        if s3.get(key):
            config[field] = string_source(s3[key])
    for key, field in (("skipEmptyFiles", "skip_empty_files"), ("uploadInterval", "upload_interval"),
                       ("uploadExtraArgs", "upload_extra_args"), ("showUrlOnly", "show_url_only"),
                       ("region", "region")):
        if s3.get(key):
            config[field] = s3[key]
    return {"module": "dagster_aws.s3.compute_log_manager", "class": "S3ComputeLogManager", "config": config}


def chart_instance(values: dict) -> dict:
    """templates/configmap-instance.yaml: the dagster.yaml every Dagster pod of the release loads."""
    daemon = values["dagsterDaemon"]
    unsupported = {"concurrency", "defsStateStorage", "pythonLogs"} & set(values)
    if unsupported:
        raise NotImplementedError(f"not mirrored: {sorted(unsupported)}")
    instance: dict = {}

    scheduler = values.get("scheduler") or {"type": "DagsterDaemonScheduler"}
    if scheduler["type"] != "DagsterDaemonScheduler":  # _scheduler.tpl
        raise NotImplementedError(scheduler["type"])
    daemon_scheduler = (scheduler.get("config") or {}).get("daemonScheduler") or {}
    instance["scheduler"] = {"module": "dagster.core.scheduler", "class": "DagsterDaemonScheduler"}
    if any(v for v in daemon_scheduler.values()):
        instance["scheduler"]["config"] = {field: daemon_scheduler[key] for key, field in (
            ("maxCatchupRuns", "max_catchup_runs"), ("maxTickRetries", "max_tick_retries"))
            if daemon_scheduler.get(key)}

    pg = postgres_config(values)
    instance["schedule_storage"] = {"module": "dagster_postgres.schedule_storage",
                                    "class": "PostgresScheduleStorage", "config": pg}
    instance["run_launcher"] = k8s_run_launcher(values)
    instance["run_storage"] = {"module": "dagster_postgres.run_storage", "class": "PostgresRunStorage",
                               "config": pg}
    instance["event_log_storage"] = {"module": "dagster_postgres.event_log", "class": "PostgresEventLogStorage",
                                     "config": pg}

    if daemon["enabled"] and daemon["runCoordinator"]["enabled"]:  # _run-coordinator.tpl
        if daemon["runCoordinator"]["type"] != "QueuedRunCoordinator":
            raise NotImplementedError(daemon["runCoordinator"]["type"])
        queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
        coordinator = {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"}
        if any(v is not None for v in queued.values()):
            config = {"max_concurrent_runs": -1 if queued.get("maxConcurrentRuns") is None
                      else queued["maxConcurrentRuns"]}
            for key, field in (("tagConcurrencyLimits", "tag_concurrency_limits"),
                               ("dequeueIntervalSeconds", "dequeue_interval_seconds"),
                               ("dequeueUseThreads", "dequeue_use_threads"),
                               ("dequeueNumWorkers", "dequeue_num_workers")):
                if queued.get(key):
                    config[field] = queued[key]
            if queued.get("blockOpConcurrencyLimitedRuns"):
                raise NotImplementedError("blockOpConcurrencyLimitedRuns")
            coordinator["config"] = config
        instance["run_coordinator"] = coordinator

    manager = values["computeLogManager"]["type"]
    if manager != "S3ComputeLogManager":
        raise NotImplementedError(manager)
    instance["compute_logs"] = s3_compute_log_manager(values)

    for section in ("runMonitoring", "runRetries"):
        if daemon["enabled"] and daemon[section]["enabled"]:
            raise NotImplementedError(f"dagsterDaemon.{section} (this project sets them in additionalInstanceConfig)")
    for section in ("sensors", "schedules"):
        settings = daemon.get(section) or {}
        if daemon["enabled"] and settings.get("useThreads"):
            instance[section] = {"use_threads": True}
            for key, field in (("numWorkers", "num_workers"), ("numSubmitWorkers", "num_submit_workers")):
                if settings.get(key):
                    instance[section][field] = settings[key]

    instance["telemetry"] = {"enabled": values["telemetry"]["enabled"]}
    retention = values.get("retention") or {}
    if retention.get("enabled"):
        instance["retention"] = {}
        for key, field in (("sensor", "sensor"), ("schedule", "schedule"), ("autoMaterialize", "auto_materialize")):
            if retention.get(key):
                instance["retention"][field] = {"purge_after_days": retention[key]["purgeAfterDays"]}
    instance.update(copy.deepcopy(values.get("additionalInstanceConfig") or {}))
    return instance


def chart_environment(values: dict) -> dict:
    """What ../dagster.yaml's environment variables stand for when it is to be the chart's instance."""
    pg = values["postgresql"]
    return {
        "DAGSTER_PG_HOST": pg["postgresqlHost"],
        "DAGSTER_PG_PORT": str(pg["service"]["port"]),
        "DAGSTER_PG_DB": pg["postgresqlDatabase"],
        "DAGSTER_PG_USERNAME": pg["postgresqlUsername"],
        "DAGSTER_K8S_SERVICE_ACCOUNT": service_account_name(values),
        "DAGSTER_K8S_NAMESPACE": values["runLauncher"]["config"]["k8sRunLauncher"].get("jobNamespace") or NAMESPACE,
        "DAGSTER_K8S_INSTANCE_CONFIG_MAP": f"{fullname('dagster', values)}-instance",
        "DAGSTER_K8S_PG_PASSWORD_SECRET": postgresql_secret_name(values),
        "DAGSTER_HOME": values["global"]["dagsterHome"],
    }


# --- Pod Security Standards -----------------------------------------------------------------------------------
# https://kubernetes.io/docs/concepts/security/pod-security-standards/ (Baseline and Restricted, v1.25+),
# on a pod spec as the API server receives it (camelCase).

BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def restricted_violations(pod: dict) -> list[str]:
    """Every rule of the `restricted` profile (which includes `baseline`) that a pod template breaks."""
    spec, metadata = pod["spec"], pod.get("metadata") or {}
    found: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    containers = [(f"{kind}[{c.get('name')}]", c) for kind in ("initContainers", "containers", "ephemeralContainers")
                  for c in spec.get(kind) or []]

    # Baseline
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        found.append("HostProcess: pod windowsOptions.hostProcess")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            found.append(f"Host namespaces: {key}")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            found.append(f"HostPath volumes: {volume['name']}")
        if kinds - RESTRICTED_VOLUME_TYPES:
            found.append(f"Volume types: {volume['name']} is {sorted(kinds)}")
    for key, value in (metadata.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            found.append(f"AppArmor: {key}={value}")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"Sysctls: {sysctl['name']}")

    def common(where: str, sc: dict):
        se = sc.get("seLinuxOptions") or {}
        if se.get("type") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            found.append(f"SELinux: {where} {se}")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            found.append(f"Seccomp: {where} Unconfined")
        if (sc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
            found.append(f"AppArmor: {where} {sc['appArmorProfile']}")
        if sc.get("runAsUser") == 0:
            found.append(f"Running as non-root user: {where} runAsUser 0")

    common("pod", pod_sc)
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    for where, container in containers:
        sc = container.get("securityContext") or {}
        common(where, sc)
        if sc.get("privileged"):
            found.append(f"Privileged containers: {where}")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"HostProcess: {where}")
        if sc.get("procMount") not in (None, "Default"):
            found.append(f"/proc mount type: {where}")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"Host ports: {where} {port['hostPort']}")
        capabilities = sc.get("capabilities") or {}
        added = set(capabilities.get("add") or [])
        if added - BASELINE_CAPABILITIES:
            found.append(f"Capabilities (baseline): {where} adds {sorted(added - BASELINE_CAPABILITIES)}")
        # Restricted
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"Privilege escalation: {where} allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot") is False or (sc.get("runAsNonRoot") is not True and pod_sc.get("runAsNonRoot") is not True):
            found.append(f"Running as non-root: {where}")
        container_seccomp = (sc.get("seccompProfile") or {}).get("type")
        if (container_seccomp or pod_seccomp) not in ("RuntimeDefault", "Localhost"):
            found.append(f"Seccomp: {where} has no RuntimeDefault or Localhost profile")
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"Capabilities: {where} does not drop ALL")
        if added - {"NET_BIND_SERVICE"}:
            found.append(f"Capabilities: {where} adds {sorted(added - {'NET_BIND_SERVICE'})}")
    return found


def user_deployment_config_maps(values: dict) -> dict[str, dict]:
    """charts/dagster-user-deployments/templates/configmap-env-shared.yaml ("dagsterUserDeployments.sharedEnv") and
    configmap-env-user.yaml (a deployment's `env` when it is a map): the ConfigMaps its code server loads."""
    sub = user_deployments_values(values)
    name = fullname("dagster-user-deployments", sub)
    maps = {f"{name}-user-deployments-shared-env": {
        "DAGSTER_HOME": sub["global"].get("dagsterHome") or sub["dagsterHome"],
        "DAGSTER_K8S_PIPELINE_RUN_NAMESPACE": NAMESPACE,
        "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP": f"{name}-pipeline-env"}}
    for deployment in sub["deployments"]:
        env = deployment.get("env")
        maps[f"{name}-{deployment['name']}-user-env"] = {k: str(v) for k, v in env.items()} if isinstance(env, dict) else {}
    return maps

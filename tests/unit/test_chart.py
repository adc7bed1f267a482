"""The Helm chart (charts/smartspec): its copies of the generated manifests cannot drift, it
lints, it renders, its pods meet Pod Security "restricted", its schema refuses bad values,
and what it renders agrees with the Python code that reads it (settings, gateway config,
admission policy, RBAC).

The helm CLI is built from its Go module by tools/build-helm.sh into the version-keyed cache
(~70 s once, then a 0.1 s check); `HELM_BIN` points at another helm instead. Without Go and
without a cached helm the helm-based tests are skipped; the drift tests always run.
tests/integration/test_chart_install.py sends the rendered objects to a real API server.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartspec.builders.admission import build_spec_approval_policy
from smartspec.builders.jobs import DEFAULT_GATEWAY_POD_LABELS
from smartspec.gateway.config import load_gateway_config
from smartspec.provenance.keys import parse_provenance_keys
from smartspec.settings import GatewaySettings, OperatorSettings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "smartspec"
BUILD_HELM = REPO / "tools" / "build-helm.sh"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
GO_MISSING = 3  # build-helm.sh's exit status when it needs Go and finds none

Doc = dict[str, Any]


# ---------------------------------------------------------------- drift (no helm needed)


@pytest.mark.parametrize(("source", "copy"), [("crds", "files/crds"), ("deploy", "files/deploy")])
def test_chart_copies_of_generated_manifests_do_not_drift(source: str, copy: str) -> None:
    """files/crds and files/deploy are byte-for-byte crds/ and deploy/ (`make crds` copies
    them); the chart renders its CRDs, RBAC and admission policy from these copies."""
    originals = {p.name: p.read_bytes() for p in (REPO / source).glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in (CHART / copy).glob("*.yaml")}
    assert originals, f"{source}/ has no manifests"
    assert sorted(copies) == sorted(originals), (
        f"charts/smartspec/{copy}/ must hold exactly the files of {source}/ (run `make crds`)"
    )
    stale = sorted(name for name in originals if copies[name] != originals[name])
    assert not stale, f"charts/smartspec/{copy}/{stale} differ from {source}/ (run `make crds`)"


# ---------------------------------------------------------------- helm


def resolve_helm() -> Path:
    """$HELM_BIN, else tools/build-helm.sh -q (builds into the cache on first use)."""
    if os.environ.get("HELM_BIN"):
        return Path(os.environ["HELM_BIN"])
    # stderr (build progress) streams straight through.
    result = subprocess.run(
        ["bash", str(BUILD_HELM), "-q"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode == GO_MISSING:
        pytest.skip("helm is not cached and no Go toolchain can build it (tools/build-helm.sh)")
    if result.returncode != 0:
        pytest.fail(f"{BUILD_HELM} failed with exit code {result.returncode}; see its output")
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("export HELM_BIN="), last
    return Path(last.removeprefix("export HELM_BIN="))


@pytest.fixture(scope="module")
def helm() -> Path:
    return resolve_helm()


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, timeout=120
    )


def render(helm: Path, *args: str, namespace: str = "smartspec") -> list[Doc]:
    """`helm template smartspec charts/smartspec ARGS` as a list of objects."""
    result = run_helm(helm, "template", "smartspec", str(CHART), "-n", namespace, *args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def values(name: str) -> list[str]:
    return ["-f", str(CHART / "ci" / name)]


def one(docs: list[Doc], kind: str, name_suffix: str = "") -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{kind} *{name_suffix}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def container_env(deployment: Doc) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


@pytest.fixture(scope="module")
def default_docs(helm: Path) -> list[Doc]:
    return render(helm, *values("default-values.yaml"))


@pytest.fixture(scope="module")
def production_docs(helm: Path) -> list[Doc]:
    return render(helm, *values("production-values.yaml"))


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_helm_lint_passes(helm: Path, values_file: Path) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(values_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_helm_lint_without_a_bucket_names_the_missing_value(helm: Path) -> None:
    """s3.bucket has no default: the chart's own values alone do not install."""
    result = run_helm(helm, "lint", str(CHART))
    assert result.returncode != 0
    assert "/s3/bucket" in result.stdout + result.stderr


def test_default_install_renders_the_expected_objects(default_docs: list[Doc]) -> None:
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in default_docs)
    assert kinds == sorted(
        [
            "ClusterRole/smartspec-builder",
            "ClusterRole/smartspec-gateway",
            "ClusterRole/smartspec-operator",
            "ClusterRole/smartspec-platform-admin",
            "ClusterRole/smartspec-viewer",
            "ClusterRoleBinding/smartspec-gateway",
            "ClusterRoleBinding/smartspec-operator",
            "ConfigMap/smartspec-gateway",
            "CustomResourceDefinition/creditbudgets.smartspec.dev",
            "CustomResourceDefinition/generationruns.smartspec.dev",
            "CustomResourceDefinition/specs.smartspec.dev",
            "Deployment/smartspec-gateway",
            "Deployment/smartspec-operator",
            "Role/smartspec-operator-leader-election",
            "RoleBinding/smartspec-operator-leader-election",
            "Secret/smartspec-provenance-keys",
            "Secret/smartspec-run-token-keys",
            "Service/smartspec-gateway",
            "ServiceAccount/smartspec-gateway",
            "ServiceAccount/smartspec-operator",
            "ValidatingAdmissionPolicy/smartspec-spec-approval",
            "ValidatingAdmissionPolicyBinding/smartspec-spec-approval",
        ]
    )


def test_names_are_prefixed_with_the_release(helm: Path) -> None:
    docs = render(helm, *values("default-values.yaml"))
    names = {d["metadata"]["name"] for d in docs if d["kind"] != "CustomResourceDefinition"}
    assert all(name.startswith("smartspec-") for name in names), names
    other = render_release(helm, "acme")
    names = {d["metadata"]["name"] for d in other if d["kind"] != "CustomResourceDefinition"}
    assert all(name.startswith("acme-smartspec-") for name in names), names


def render_release(helm: Path, release: str) -> list[Doc]:
    result = run_helm(
        helm, "template", release, str(CHART), "-n", "tools", *values("default-values.yaml")
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


# ---------------------------------------------------------------- Pod Security restricted


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield f"Pod/{doc['metadata']['name']}", doc["spec"]


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_every_pod_meets_pod_security_restricted(helm: Path, values_file: Path) -> None:
    """The checks of the "restricted" Pod Security Standard, plus a read-only root."""
    pods = list(pod_specs(render(helm, "-f", str(values_file))))
    assert len(pods) == 2
    for where, spec in pods:
        pod_sc = spec.get("securityContext") or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(flag), f"{where}: {flag}"
        for volume in spec.get("volumes") or []:
            assert "hostPath" not in volume, f"{where}: hostPath volume {volume['name']}"
        containers = [*spec.get("initContainers", []), *spec["containers"]]
        for c in containers:
            sc = c.get("securityContext") or {}
            at = f"{where} container {c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, at
            assert not sc.get("privileged"), at
            assert sc.get("readOnlyRootFilesystem") is True, at
            assert (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))) is True, at
            assert sc.get("runAsUser", pod_sc.get("runAsUser")) != 0, at
            seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
            assert seccomp.get("type") in {"RuntimeDefault", "Localhost"}, at
            caps = sc.get("capabilities") or {}
            assert "ALL" in caps.get("drop", []), at
            assert set(caps.get("add", [])) <= {"NET_BIND_SERVICE"}, at
            assert c["resources"].get("requests"), f"{at}: no resource requests"
            assert c.get("livenessProbe"), f"{at}: no liveness probe"
            for port in c.get("ports", []):
                assert "hostPort" not in port, at


def test_operator_deployment_shape(default_docs: list[Doc]) -> None:
    deployment = one(default_docs, "Deployment", "-operator")
    assert deployment["spec"]["replicas"] == 1
    # A new pod stands by until the old one hands the Lease over: roll, never two leaders.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["smartspec", "operator"]
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["path"] == "/healthz"
    assert ports[probe["port"]] == 8080
    assert ports["metrics"] == 9090


def test_gateway_deployment_shape(default_docs: list[Doc]) -> None:
    deployment = one(default_docs, "Deployment", "-gateway")
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["command"] == ["smartspec", "gateway"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    # The sandbox NetworkPolicy admits egress to exactly these pod labels.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert DEFAULT_GATEWAY_POD_LABELS.items() <= labels.items()
    service = one(default_docs, "Service", "-gateway")
    assert service["spec"]["ports"][0]["port"] == 8000
    assert service["spec"]["selector"].items() <= labels.items()
    assert "envFrom" not in container  # no provider Secret named: no provider keys at all


def test_operator_replicas_elect_a_leader_through_a_lease_in_their_namespace(
    helm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(
        helm, *values("default-values.yaml"), "--set", "operator.replicas=2", namespace="platform"
    )
    deployment = one(docs, "Deployment", "-operator")
    assert deployment["spec"]["replicas"] == 2
    settings_env(deployment, monkeypatch)
    settings = OperatorSettings()
    assert settings.leader_election_namespace == "platform"
    assert settings.leader_election_lease == "smartspec-operator"
    role, binding = (
        one(docs, "Role", "-leader-election"),
        one(docs, "RoleBinding", "-leader-election"),
    )
    # Namespaced: a ClusterRole binding would let it rewrite any controller's Lease.
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "platform"
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "update"],
        }
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": "platform"}
    ]
    cluster_rules = [r for d in docs if d["kind"] == "ClusterRole" for r in d["rules"]]
    assert not [r for r in cluster_rules if "leases" in r["resources"]]


def test_without_leader_election_one_replica_is_recreated_never_rolled(helm: Path) -> None:
    off = ["--set", "operator.leaderElection.enabled=false"]
    docs = render(helm, *values("default-values.yaml"), *off)
    deployment = one(docs, "Deployment", "-operator")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "SMARTSPEC_LEADER_ELECTION_NAMESPACE" not in container_env(deployment)
    assert not [d for d in docs if d["kind"] == "Role"]
    result = run_helm(
        helm,
        "template",
        "smartspec",
        str(CHART),
        *values("default-values.yaml"),
        *off,
        "--set",
        "operator.replicas=2",
    )
    assert result.returncode != 0
    assert "operator.replicas > 1 needs operator.leaderElection.enabled" in result.stderr


# ---------------------------------------------------------------- settings and config


ALL_OPTIONAL = [
    "--set",
    "s3.endpointUrl=http://minio.storage:9000",
    "--set",
    "operator.leaderElection.leaseName=smartspec-leader",
    "--set-json",
    'operator.localModels={"llama":{"image":"vllm/vllm-openai:v0.6","port":8000}}',
    "--set-json",
    'operator.namespaces=["team-a","team-b"]',
    "--set",
    "retention.s3CredentialsSecret=smartspec-retention-s3",
]


def settings_env(deployment: Doc, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = container_env(deployment)
    for name in [n for n in os.environ if n.startswith("SMARTSPEC_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("SMARTSPEC_"):
            monkeypatch.setenv(name, value)
    return env


def test_operator_env_sets_every_operator_setting_validly(
    helm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(helm, *values("production-values.yaml"), *ALL_OPTIONAL)
    env = settings_env(one(docs, "Deployment", "-operator"), monkeypatch)
    wanted = {f"SMARTSPEC_{name.upper()}" for name in OperatorSettings.model_fields}
    assert sorted(wanted - env.keys()) == []
    settings = OperatorSettings()  # the process's own validation of what the chart set
    assert settings.s3_bucket == "acme-smartspec-artifacts"
    assert settings.namespaces == ["team-a", "team-b"]
    assert settings.gateway_url == "http://smartspec-gateway.smartspec.svc:8000/v1"
    assert settings.gateway_namespace == "smartspec"
    assert settings.runtime_class_name == "gvisor"
    assert settings.s3_egress[0]["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    assert settings.local_models["llama"]["port"] == 8000
    assert str(settings.token_keys_file) == "/etc/smartspec/run-token/keys"


def test_gateway_env_sets_every_gateway_setting_validly(
    helm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(helm, *values("production-values.yaml"), *ALL_OPTIONAL)
    deployment = one(docs, "Deployment", "-gateway")
    env = settings_env(deployment, monkeypatch)
    wanted = {f"SMARTSPEC_{name.upper()}" for name in GatewaySettings.model_fields}
    assert sorted(wanted - env.keys()) == []
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    replica = next(e for e in container["env"] if e["name"] == "SMARTSPEC_GATEWAY_REPLICA")
    assert replica["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    monkeypatch.setenv("SMARTSPEC_GATEWAY_REPLICA", "smartspec-gateway-abc")
    settings = GatewaySettings()
    assert settings.gateway_max_body_bytes == 1_048_576
    assert settings.gateway_port == 8000
    assert str(settings.gateway_token_keys_file) == "/etc/smartspec/run-token/keys"
    assert str(settings.gateway_config) == "/etc/smartspec/gateway/gateway.yaml"


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_gateway_configmap_is_a_valid_gateway_config(
    helm: Path, values_file: Path, tmp_path: Path
) -> None:
    docs = render(helm, "-f", str(values_file))
    config = one(docs, "ConfigMap", "-gateway")
    deployment = one(docs, "Deployment", "-gateway")
    mounts = {
        m["name"]: m["mountPath"]
        for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    assert container_env(deployment)["SMARTSPEC_GATEWAY_CONFIG"] == (
        f"{mounts['config']}/gateway.yaml"
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(config["data"]["gateway.yaml"])
    parsed = load_gateway_config(path)
    assert parsed.models


def test_run_token_secret_is_generated_and_mounted_in_both(default_docs: list[Doc]) -> None:
    secret = one(default_docs, "Secret", "-run-token-keys")
    key = base64.b64decode(secret["data"]["keys"]).decode()
    assert key.endswith("\n")
    assert len(key.strip()) == 48
    assert key.strip().isalnum()
    for suffix, variable in (
        ("-operator", "SMARTSPEC_TOKEN_KEYS_FILE"),
        ("-gateway", "SMARTSPEC_GATEWAY_TOKEN_KEYS_FILE"),
    ):
        deployment = one(default_docs, "Deployment", suffix)
        spec = deployment["spec"]["template"]["spec"]
        volume = next(v for v in spec["volumes"] if v["name"] == "run-token-keys")
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        mount = next(
            m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "run-token-keys"
        )
        assert container_env(deployment)[variable] == f"{mount['mountPath']}/keys"


def test_provenance_key_is_generated_kept_and_mounted_in_the_operator_only(
    default_docs: list[Doc],
) -> None:
    """CORE-005, "Keys": one ECDSA P-256 key, kept on uninstall, read by the operator."""
    secret = one(default_docs, "Secret", "-provenance-keys")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    ring = parse_provenance_keys(base64.b64decode(secret["data"]["keys.pem"]).decode(), "chart")
    assert ring.signing.algorithm == "ecdsa-p256"
    operator = one(default_docs, "Deployment", "-operator")
    spec = operator["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "provenance-keys")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "provenance-keys")
    assert mount["readOnly"] is True
    env = container_env(operator)
    assert env["SMARTSPEC_PROVENANCE_KEYS_FILE"] == f"{mount['mountPath']}/keys.pem"
    assert env["SMARTSPEC_PROVENANCE_BUILDER_ID"] == "https://smartspec.dev/operator"
    gateway = one(default_docs, "Deployment", "-gateway")["spec"]["template"]["spec"]
    assert "provenance-keys" not in {v["name"] for v in gateway["volumes"]}


def test_existing_secrets_are_used_not_created(production_docs: list[Doc]) -> None:
    assert not [d for d in production_docs if d["kind"] == "Secret"]
    gateway = one(production_docs, "Deployment", "-gateway")["spec"]["template"]["spec"]
    operator = one(production_docs, "Deployment", "-operator")["spec"]["template"]["spec"]
    volume = next(v for v in operator["volumes"] if v["name"] == "provenance-keys")
    assert volume["secret"]["secretName"] == "smartspec-provenance-keys"
    for spec in (gateway, operator):
        volume = next(v for v in spec["volumes"] if v["name"] == "run-token-keys")
        assert volume["secret"]["secretName"] == "smartspec-run-token-keys"
    sources = [s["secretRef"]["name"] for s in gateway["containers"][0]["envFrom"]]
    assert sources == ["smartspec-s3", "smartspec-providers"]
    # Provider keys reach the gateway only; the operator gets the S3 credentials alone.
    assert [s["secretRef"]["name"] for s in operator["containers"][0]["envFrom"]] == [
        "smartspec-s3"
    ]


def test_operator_and_gateway_can_hold_separate_s3_credentials(helm: Path) -> None:
    """Each process's own Secret, scoped to its key areas (CORE-004, "Storage")."""
    docs = render(
        helm,
        *values("production-values.yaml"),
        "--set",
        "s3.operatorCredentialsSecret=s3-operator,s3.gatewayCredentialsSecret=s3-gateway",
    )

    def sources(suffix: str) -> list[str]:
        container = one(docs, "Deployment", suffix)["spec"]["template"]["spec"]["containers"][0]
        return [source["secretRef"]["name"] for source in container["envFrom"]]

    assert sources("-operator") == ["s3-operator"]
    assert sources("-gateway") == ["s3-gateway", "smartspec-providers"]


# ---------------------------------------------------------------- generated manifests


def test_crds_are_the_generated_ones_kept_on_uninstall(default_docs: list[Doc]) -> None:
    rendered = {
        d["metadata"]["name"]: d for d in default_docs if d["kind"] == "CustomResourceDefinition"
    }
    for path in sorted((REPO / "crds").glob("*.yaml")):
        generated = yaml.safe_load(path.read_text())
        crd = rendered[generated["metadata"]["name"]]
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert generated["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()
        assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert {k: v for k, v in crd.items() if k != "metadata"} == {
            k: v for k, v in generated.items() if k != "metadata"
        }


def test_crds_can_be_left_out_or_not_kept(helm: Path) -> None:
    docs = render(helm, *values("default-values.yaml"), "--set", "crds.enabled=false")
    assert not [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    docs = render(helm, *values("default-values.yaml"), "--set", "crds.keep=false")
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 3
    assert all("annotations" not in d["metadata"] for d in crds)


def test_process_roles_have_the_generated_rules(default_docs: list[Doc]) -> None:
    for component in ("operator", "gateway"):
        generated = yaml.safe_load((REPO / "deploy" / f"rbac-{component}.yaml").read_text())
        role = one(default_docs, "ClusterRole", f"-{component}")
        assert role["rules"] == generated["rules"]
        binding = one(default_docs, "ClusterRoleBinding", f"-{component}")
        account = one(default_docs, "ServiceAccount", f"-{component}")
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": account["metadata"]["name"],
                "namespace": "smartspec",
            }
        ]


def test_user_roles_are_the_generated_ones(default_docs: list[Doc]) -> None:
    generated = [
        d for d in yaml.safe_load_all((REPO / "deploy" / "rbac-users.yaml").read_text()) if d
    ]
    for role in generated:
        rendered = one(default_docs, "ClusterRole", role["metadata"]["name"])
        assert rendered["rules"] == role["rules"]
        assert role["metadata"]["labels"].items() <= rendered["metadata"]["labels"].items()
    admin = one(default_docs, "ClusterRole", "-platform-admin")
    assert not [k for k in admin["metadata"]["labels"] if k.startswith("rbac.authorization")]


@pytest.mark.parametrize(
    "groups", [["smartspec:approvers"], ["platform:leads", "system:serviceaccounts:argocd"]]
)
def test_approval_policy_matches_the_builder(helm: Path, groups: list[str]) -> None:
    docs = render(
        helm,
        *values("default-values.yaml"),
        "--set-json",
        f"approval.approverGroups={json.dumps(groups)}",
    )
    expected_policy, expected_binding = build_spec_approval_policy(tuple(groups))
    policy = one(docs, "ValidatingAdmissionPolicy")
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    assert policy["spec"] == expected_policy["spec"]
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == expected_binding["spec"]["validationActions"]


def test_approval_policy_quotes_group_names_as_cel(helm: Path) -> None:
    docs = render(
        helm,
        *values("default-values.yaml"),
        "--set-json",
        """approval.approverGroups=["o'brien"]""",
    )
    expected, _ = build_spec_approval_policy(("o'brien",))
    assert one(docs, "ValidatingAdmissionPolicy")["spec"] == expected["spec"]


# ---------------------------------------------------------------- options


def test_production_values_scale_and_monitor_the_gateway(production_docs: list[Doc]) -> None:
    gateway = one(production_docs, "Deployment", "-gateway")
    assert "replicas" not in gateway["spec"]  # the HPA owns it
    hpa = one(production_docs, "HorizontalPodAutoscaler", "-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    pdb = one(production_docs, "PodDisruptionBudget", "-gateway")
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        gateway["spec"]["template"]["metadata"]["labels"].items()
    )
    monitors = [d for d in production_docs if d["kind"] == "ServiceMonitor"]
    assert sorted(d["metadata"]["name"] for d in monitors) == [
        "smartspec-gateway",
        "smartspec-operator",
    ]
    rule = one(production_docs, "PrometheusRule")
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    assert "smartspec_budget_alerts_total" in exprs
    assert 'smartspec_runs_finished_total{phase="Failed"}' in exprs
    assert 'smartspec_gateway_requests_total{status="5xx"}' in exprs
    assert rule["metadata"]["labels"]["release"] == "prometheus"


def test_optional_objects_are_off_by_default(default_docs: list[Doc]) -> None:
    kinds = {d["kind"] for d in default_docs}
    assert not kinds & {
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
    }
    assert one(default_docs, "Deployment", "-gateway")["spec"]["replicas"] == 2


# ---------------------------------------------------------------- schema


def bad_values_file(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "bad-values.yaml"
    path.write_text(text)
    return ["-f", str(path)]


@pytest.mark.parametrize(
    ("args", "field", "why"),
    [
        (["--set", "gateway.replicas=0"], "/gateway/replicas", "minimum"),
        (["--set", "s3.bucket="], "/s3/bucket", "minLength"),
        (["--set-string", "gateway.replicas=two"], "/gateway/replicas", "want integer"),
        ("operator:\n  replicas: 1.5\n", "/operator/replicas", "want integer"),
        (["--set", "operator.replicas=6"], "/operator/replicas", "maximum"),
        (
            ["--set", "operator.leaderElection.leaseName=Not_A_Name"],
            "/operator/leaderElection/leaseName",
            "",
        ),
        ("image:\n  tag: 1.0\n", "/image/tag", "want string"),
        (["--set", "logLevel=VERBOSE"], "/logLevel", "must be one of"),
        (
            ["--set", "containerSecurityContext.readOnlyRootFilesystem=false"],
            "/containerSecurityContext/readOnlyRootFilesystem",
            "",
        ),
        (
            ["--set", "podSecurityContext.runAsNonRoot=false"],
            "/podSecurityContext/runAsNonRoot",
            "",
        ),
        (["--set", "gateway.config.models=null"], "/gateway/config", "models"),
        (["--set-json", "approval.approverGroups=[]"], "/approval/approverGroups", "minItems"),
        (
            [
                "--set-json",
                'gateway.config.models=[{"name":"m","litellmModel":"openai/m","apiKey":"sk-1"}]',
            ],
            "/gateway/config/models/0/apiKey",
            "",
        ),
        (
            ["--set", "gateway.autoscaling.maxReplicas=0"],
            "/gateway/autoscaling/maxReplicas",
            "minimum",
        ),
        (
            ["--set", "operator.sandbox.urlTtlSeconds=10"],
            "/operator/sandbox/urlTtlSeconds",
            "minimum",
        ),
        (["--set", "gatway.replicas=3"], "gatway", "additional"),
    ],
    ids=lambda v: v if isinstance(v, str) and v.startswith("/") else None,
)
def test_schema_rejects_bad_values_naming_the_field(
    helm: Path, tmp_path: Path, args: list[str] | str, field: str, why: str
) -> None:
    extra = bad_values_file(tmp_path, args) if isinstance(args, str) else args
    result = run_helm(
        helm, "template", "smartspec", str(CHART), *values("default-values.yaml"), *extra
    )
    assert result.returncode != 0, f"accepted: {extra}"
    message = result.stderr
    assert "don't meet the specifications of the schema" in message, message
    assert field in message, message
    assert why in message, message


def test_schema_is_draft_07_and_lists_every_default_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, node: Any, path: str) -> None:
        if not isinstance(value, dict) or node.get("additionalProperties") is not False:
            return
        for key, child in value.items():
            assert key in node["properties"], f"values.yaml {path}.{key} is not in the schema"
            walk(child, node["properties"][key], f"{path}.{key}")

    walk(defaults, schema, "")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_build_helm_help_runs() -> None:
    result = subprocess.run(
        ["bash", str(BUILD_HELM), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "HELM_BIN" in result.stdout

"""Sandbox Jobs, instructions Secrets and NetworkPolicies (CORE-004, "Sandbox contract").

Every pod is checked against Pod Security "restricted" (latest) by `restricted_violations`,
which is itself tested against pods that break each rule.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartspec.api.v1alpha1 import GenerationRun
from smartspec.builders.jobs import (
    GPU_RESOURCE,
    INSTRUCTIONS_FILE,
    LABEL_CORRELATION_ID,
    LABEL_ROLE,
    LABEL_RUN,
    LOCAL_MODEL_URL_ENV,
    S3_EGRESS_ANY_HTTPS,
    LocalModelSettings,
    SandboxBuildError,
    SandboxRole,
    SandboxSettings,
    build_generator_job,
    build_instructions_secret,
    build_network_policies,
    build_network_policy,
    build_test_job,
    generator_job_name,
    instructions_secret_name,
    network_policy_name,
    quantity_value,
    run_labels,
)
from smartspec.builders.jobs import test_job_name as tester_job_name

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "team-a"
UID = "7f1c2a9e-3b4d-4e5f-8a6b-0c1d2e3f4a5b"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LOCAL_MODEL = "local/qwen2.5-coder"

QWEN = LocalModelSettings(
    model=LOCAL_MODEL,
    image="registry.example/vllm-openai:0.6.3",
    args=["--model", "/models/qwen2.5-coder", "--port", "8001"],
    gpu_count=2,
    node_selector={"nvidia.com/gpu.present": "true"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    resources={"requests": {"cpu": "4", "memory": "24Gi"}, "limits": {"memory": "32Gi"}},
    env={"HF_HUB_OFFLINE": "1"},
)
BASE_SETTINGS = SandboxSettings(
    generator_image="registry.example/smartspec-generator:0.1.0",
    tester_image="registry.example/smartspec-tester:0.1.0",
    s3_egress=S3_EGRESS_ANY_HTTPS,
    local_models={LOCAL_MODEL: QWEN},
)


def settings(**changes: Any) -> SandboxSettings:
    return dataclasses.replace(BASE_SETTINGS, **changes)


def run_document(example: str) -> dict[str, Any]:
    document = yaml.safe_load((REPO / "examples/todo-service" / example).read_text())
    assert isinstance(document, dict)
    document["metadata"].update(namespace=NAMESPACE, uid=UID)
    return document


def load_run(example: str, edit: Callable[[dict[str, Any]], None] | None = None) -> GenerationRun:
    document = run_document(example)
    if edit is not None:
        edit(document)
    return GenerationRun.model_validate(document)


def llm_run() -> GenerationRun:
    return load_run("generationrun-llm.yaml")


def builtin_run() -> GenerationRun:
    return load_run("generationrun-builtin.yaml")


def local_model_run() -> GenerationRun:
    def use_local_model(document: dict[str, Any]) -> None:
        document["spec"]["generator"]["model"] = LOCAL_MODEL

    return load_run("generationrun-llm.yaml", use_local_model)


def generator_job(run: GenerationRun, config: SandboxSettings = BASE_SETTINGS) -> dict[str, Any]:
    return build_generator_job(
        run,
        2,
        config,
        instructions_secret=instructions_secret_name(run.metadata.name, 2, "gen"),
        deadline_seconds=900,
    )


def sandbox_tester_job(
    run: GenerationRun, config: SandboxSettings = BASE_SETTINGS
) -> dict[str, Any]:
    return build_test_job(
        run,
        2,
        config,
        instructions_secret=instructions_secret_name(run.metadata.name, 2, "test"),
        deadline_seconds=900,
    )


def pod_of(job: dict[str, Any]) -> dict[str, Any]:
    pod = job["spec"]["template"]["spec"]
    assert isinstance(pod, dict)
    return pod


def container(job: dict[str, Any], name: str) -> dict[str, Any]:
    pod = pod_of(job)
    matches = [c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == name]
    assert len(matches) == 1, name
    found = matches[0]
    assert isinstance(found, dict)
    return found


def env_of(item: dict[str, Any]) -> dict[str, str]:
    return {entry["name"]: entry["value"] for entry in item["env"]}


# ---------------------------------------------------------------- Pod Security "restricted"

# https://kubernetes.io/docs/concepts/security/pod-security-standards/ (restricted, latest)
RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
CONTAINER_KINDS = ("initContainers", "containers", "ephemeralContainers")


def _selinux_problems(where: str, options: dict[str, Any]) -> list[str]:
    problems = []
    if options.get("type", "") not in SELINUX_TYPES:
        problems.append(f"{where}: seLinuxOptions.type {options['type']}")
    if options.get("user") or options.get("role"):
        problems.append(f"{where}: seLinuxOptions.user/role must be unset")
    return problems


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Every Pod Security "restricted" (latest) rule the pod spec breaks; [] when compliant."""
    problems: list[str] = []
    pod_context: dict[str, Any] = pod.get("securityContext", {})
    # Baseline: host namespaces, host paths, Windows host processes, sysctls, SELinux.
    problems += [f"pod: {key}" for key in ("hostNetwork", "hostPID", "hostIPC") if pod.get(key)]
    if pod_context.get("windowsOptions", {}).get("hostProcess"):
        problems.append("pod: windowsOptions.hostProcess")
    problems += [
        f"pod: sysctl {sysctl['name']}"
        for sysctl in pod_context.get("sysctls", [])
        if sysctl["name"] not in SAFE_SYSCTLS
    ]
    problems += _selinux_problems("pod", pod_context.get("seLinuxOptions", {}))
    if pod_context.get("appArmorProfile", {}).get("type", "RuntimeDefault") == "Unconfined":
        problems.append("pod: appArmorProfile Unconfined")
    # Restricted: only ephemeral-safe volume types (no hostPath, nfs, iscsi, ...).
    for volume in pod.get("volumes", []):
        types = set(volume) - {"name"}
        if len(types) != 1 or not types <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: type {sorted(types)}")
    if pod_context.get("runAsUser") == 0:
        problems.append("pod: runAsUser 0")
    pod_seccomp = pod_context.get("seccompProfile", {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_TYPES:
        problems.append(f"pod: seccompProfile {pod_seccomp}")
    containers = [(kind, item) for kind in CONTAINER_KINDS for item in pod.get(kind, [])]
    if not containers:
        problems.append("pod: no containers")
    for kind, item in containers:
        problems += _container_violations(f"{kind}/{item['name']}", item, pod_context)
    return problems


def _container_violations(
    where: str, item: dict[str, Any], pod_context: dict[str, Any]
) -> list[str]:
    """The per-container rules; unset fields inherit the pod's security context."""
    context: dict[str, Any] = item.get("securityContext", {})
    pod_seccomp = pod_context.get("seccompProfile", {}).get("type")
    capabilities = context.get("capabilities", {})
    checks = {
        "privileged": context.get("privileged") is True,
        "allowPrivilegeEscalation must be false": context.get("allowPrivilegeEscalation")
        is not False,
        "runAsNonRoot must be true": context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        is not True,
        "runAsUser 0": context.get("runAsUser") == 0,
        "seccompProfile must be RuntimeDefault or Localhost": context.get("seccompProfile", {}).get(
            "type", pod_seccomp
        )
        not in SECCOMP_TYPES,
        "capabilities must drop ALL": "ALL" not in capabilities.get("drop", []),
        "capabilities may add only NET_BIND_SERVICE": bool(
            set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}
        ),
        "procMount": context.get("procMount", "Default") != "Default",
        "windowsOptions.hostProcess": bool(context.get("windowsOptions", {}).get("hostProcess")),
        "appArmorProfile Unconfined": context.get("appArmorProfile", {}).get("type")
        == "Unconfined",
        "hostPort": any(port.get("hostPort") for port in item.get("ports", [])),
    }
    problems = [f"{where}: {rule}" for rule, broken in checks.items() if broken]
    return problems + _selinux_problems(where, context.get("seLinuxOptions", {}))


JOBS: dict[str, Callable[[], dict[str, Any]]] = {
    "llm-generator": lambda: generator_job(llm_run()),
    "llm-tester": lambda: sandbox_tester_job(llm_run()),
    "builtin-generator": lambda: generator_job(builtin_run()),
    "builtin-tester": lambda: sandbox_tester_job(builtin_run()),
    "local-model-generator": lambda: generator_job(local_model_run()),
    "local-model-tester": lambda: sandbox_tester_job(local_model_run()),
}


@pytest.mark.parametrize("case", sorted(JOBS))
def test_every_sandbox_pod_is_pod_security_restricted(case: str) -> None:
    pod = pod_of(JOBS[case]())
    assert restricted_violations(pod) == []
    # Beyond "restricted": no API token, no service env, read-only root everywhere.
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    for item in pod["containers"] + pod.get("initContainers", []):
        assert item["securityContext"]["readOnlyRootFilesystem"] is True


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(pod: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = pod
        for part in parents:
            target = target[int(part)] if part.isdigit() else target.setdefault(part, {})
        target[last] = value

    return mutate


def _add_volume(volume: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(pod: dict[str, Any]) -> None:
        pod["volumes"].append(volume)

    return mutate


BREAKAGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "hostPath volume": _add_volume({"name": "host", "hostPath": {"path": "/"}}),
    "nfs volume": _add_volume({"name": "nfs", "nfs": {"server": "x", "path": "/"}}),
    "hostNetwork": _set("hostNetwork", True),
    "hostPID": _set("hostPID", True),
    "hostIPC": _set("hostIPC", True),
    "privileged": _set("containers.0.securityContext.privileged", True),
    "privilege escalation": _set("containers.0.securityContext.allowPrivilegeEscalation", True),
    "init container escalation": _set(
        "initContainers.0.securityContext.allowPrivilegeEscalation", True
    ),
    "init container capability": _set(
        "initContainers.0.securityContext.capabilities", {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    ),
    "no drop ALL": _set("containers.0.securityContext.capabilities", {"drop": ["NET_RAW"]}),
    "root user": _set("containers.0.securityContext.runAsUser", 0),
    "runAsNonRoot false": _set("containers.0.securityContext.runAsNonRoot", False),
    "unconfined seccomp": _set("containers.0.securityContext.seccompProfile.type", "Unconfined"),
    "hostPort": _set("containers.0.ports", [{"containerPort": 80, "hostPort": 80}]),
    "unsafe sysctl": _set("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]),
    "procMount": _set("containers.0.securityContext.procMount", "Unmasked"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_restricted_checker_catches_each_rule(breakage: str) -> None:
    pod = copy.deepcopy(pod_of(generator_job(local_model_run())))
    BREAKAGES[breakage](pod)
    assert restricted_violations(pod) != []


def test_net_bind_service_is_the_one_capability_restricted_allows() -> None:
    pod = copy.deepcopy(pod_of(generator_job(llm_run())))
    pod["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert restricted_violations(pod) == []


# ---------------------------------------------------------------- names

SHORT_NAMES = [
    (generator_job_name, ("todo-api-llm", 1), "todo-api-llm-gen-1"),
    (tester_job_name, ("todo-api-llm", 3), "todo-api-llm-test-3"),
    (instructions_secret_name, ("todo-api-llm", 2, "gen"), "todo-api-llm-gen-2"),
    (instructions_secret_name, ("todo-api-llm", 2, SandboxRole.TESTER), "todo-api-llm-test-2"),
    (instructions_secret_name, ("todo-api-llm", 10, "generator"), "todo-api-llm-gen-10"),
    (network_policy_name, ("todo-api-llm", "gen"), "todo-api-llm-sandbox-gen"),
    (network_policy_name, ("todo-api-llm", SandboxRole.TESTER), "todo-api-llm-sandbox-test"),
]


@pytest.mark.parametrize(("function", "arguments", "expected"), SHORT_NAMES)
def test_short_names_are_deterministic_and_readable(
    function: Callable[..., str], arguments: tuple[Any, ...], expected: str
) -> None:
    assert function(*arguments) == expected


NAME_FUNCTIONS: list[Callable[[str], str]] = [
    lambda run: generator_job_name(run, 1),
    lambda run: tester_job_name(run, 10),
    lambda run: instructions_secret_name(run, 7, "test"),
    lambda run: network_policy_name(run, "gen"),
]
LONG_RUN_NAMES = ["a" * 60, "b" * 253, "team-a.todo-api." + "c" * 200, "x" * 58]


@pytest.mark.parametrize("run_name", LONG_RUN_NAMES)
@pytest.mark.parametrize("index", range(len(NAME_FUNCTIONS)))
def test_long_names_are_truncated_to_valid_dns_labels(run_name: str, index: int) -> None:
    name = NAME_FUNCTIONS[index](run_name)
    assert len(name) <= 63
    assert DNS_LABEL.fullmatch(name), name
    assert name == NAME_FUNCTIONS[index](run_name)  # deterministic
    # The readable suffix survives; an 8-hex digest of the full name precedes it.
    assert re.search(r"-[0-9a-f]{8}-(gen|test|sandbox-gen|sandbox-test)(-\d+)?$", name), name


def test_truncated_names_stay_unique() -> None:
    prefix = "todo-api-" + "x" * 100
    names = {
        function(run)
        for run in (prefix + "-one", prefix + "-two", prefix + ".one")
        for function in NAME_FUNCTIONS
    }
    assert len(names) == 3 * len(NAME_FUNCTIONS)
    attempts = {generator_job_name(prefix, k) for k in range(1, 11)}
    assert len(attempts) == 10


def test_name_at_the_limit_is_kept_and_one_over_is_hashed() -> None:
    fits = "r" * (63 - len("-gen-1"))
    assert generator_job_name(fits, 1) == f"{fits}-gen-1"
    over = generator_job_name(fits + "r", 1)
    assert len(over) == 63
    assert over != f"{fits}r-gen-1"
    assert over.endswith("-gen-1")


def test_dotted_run_names_become_dns_labels() -> None:
    name = generator_job_name("todo.api", 1)
    assert DNS_LABEL.fullmatch(name)
    assert name != generator_job_name("todo-api", 1)


@pytest.mark.parametrize("attempt", [0, 11, -1, True])
def test_attempt_out_of_range_is_refused(attempt: Any) -> None:
    with pytest.raises(ValueError, match=r"attempt must be an integer 1\.\.10"):
        generator_job_name("run", attempt)


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="role must be generator"):
        instructions_secret_name("run", 1, "builder")  # type: ignore[arg-type]


# ---------------------------------------------------------------- Job shape

ROLE_JOBS: list[tuple[str, Callable[[GenerationRun], dict[str, Any]], str]] = [
    ("generator", generator_job, "todo-api-llm-gen-2"),
    ("tester", sandbox_tester_job, "todo-api-llm-test-2"),
]


@pytest.mark.parametrize(("role", "build", "name"), ROLE_JOBS)
def test_job_metadata_labels_and_owner(
    role: str, build: Callable[[GenerationRun], dict[str, Any]], name: str
) -> None:
    job = build(llm_run())
    assert job["apiVersion"] == "batch/v1"
    assert job["kind"] == "Job"
    metadata = job["metadata"]
    assert metadata["name"] == name
    assert metadata["namespace"] == NAMESPACE
    assert metadata["labels"] == {
        "app.kubernetes.io/name": "smartspec-sandbox",
        "app.kubernetes.io/managed-by": "smartspec",
        "smartspec.dev/run": "todo-api-llm",
        "smartspec.dev/run-uid": UID,
        "smartspec.dev/attempt": "2",
        "smartspec.dev/role": role,
        "smartspec.dev/correlation-id": UID,
    }
    assert job["spec"]["template"]["metadata"]["labels"] == metadata["labels"]
    assert metadata["ownerReferences"] == [
        {
            "apiVersion": "smartspec.dev/v1alpha1",
            "kind": "GenerationRun",
            "name": "todo-api-llm",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


@pytest.mark.parametrize(("role", "build", "name"), ROLE_JOBS)
def test_job_retries_belong_to_the_operator(
    role: str, build: Callable[[GenerationRun], dict[str, Any]], name: str
) -> None:
    spec = build(llm_run())["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 900
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert pod_of({"spec": spec})["restartPolicy"] == "Never"


@pytest.mark.parametrize(
    ("role", "command", "image"),
    [
        ("generator", ["python", "-m", "smartspec.sandbox.generator"], "smartspec-generator"),
        ("tester", ["python", "-m", "smartspec.sandbox.tester"], "smartspec-tester"),
    ],
)
def test_container_follows_the_sandbox_contract(role: str, command: list[str], image: str) -> None:
    run = llm_run()
    job = generator_job(run) if role == "generator" else sandbox_tester_job(run)
    pod = pod_of(job)
    main = container(job, role)
    assert main["command"] == command
    assert image in main["image"]
    assert main["imagePullPolicy"] == "IfNotPresent"
    assert main["workingDir"] == "/workspace"
    assert env_of(main) == {
        "SMARTSPEC_INSTRUCTIONS_FILE": INSTRUCTIONS_FILE,
        "HOME": "/workspace",
        "TMPDIR": "/tmp",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    assert INSTRUCTIONS_FILE == "/var/run/smartspec/instructions.json"
    assert main["volumeMounts"] == [
        {"name": "workspace", "mountPath": "/workspace"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "instructions", "mountPath": "/var/run/smartspec", "readOnly": True},
    ]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["volumes"] == [
        {"name": "workspace", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
        {
            "name": "instructions",
            "secret": {
                "secretName": f"todo-api-llm-{'gen' if role == 'generator' else 'test'}-2",
                "defaultMode": 256,
                "items": [{"key": "instructions.json", "path": "instructions.json"}],
            },
        },
    ]
    assert "runtimeClassName" not in pod
    assert "initContainers" not in pod


def test_job_manifests_are_json_and_independent_of_the_settings() -> None:
    job = generator_job(local_model_run())
    json.dumps(job)
    pod = pod_of(job)
    pod["nodeSelector"]["mutated"] = "yes"
    pod["containers"][0]["resources"]["limits"]["cpu"] = "64"
    pod["initContainers"][0]["resources"]["limits"]["memory"] = "1Ti"
    assert generator_job(local_model_run()) != job
    assert BASE_SETTINGS.generator_resources["limits"]["cpu"] == "1"
    assert QWEN.node_selector == {"nvidia.com/gpu.present": "true"}


@pytest.mark.parametrize(
    ("settings_class", "run_class", "expected"),
    [
        (None, None, None),
        ("gvisor", None, "gvisor"),
        (None, "kata", "kata"),
        ("gvisor", "kata", "kata"),
    ],
)
def test_run_runtime_class_overrides_settings(
    settings_class: str | None, run_class: str | None, expected: str | None
) -> None:
    def set_runtime_class(document: dict[str, Any]) -> None:
        if run_class is not None:
            document["spec"].setdefault("sandbox", {})["runtimeClassName"] = run_class

    run = load_run("generationrun-builtin.yaml", set_runtime_class)
    config = settings(runtime_class_name=settings_class)
    for job in (generator_job(run, config), sandbox_tester_job(run, config)):
        assert pod_of(job).get("runtimeClassName") == expected


def test_run_resources_override_the_defaults_per_container() -> None:
    # The llm example sets generatorResources: requests 100m/256Mi, limits 1/1Gi.
    run = llm_run()
    assert container(generator_job(run), "generator")["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    assert container(sandbox_tester_job(run), "tester")["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }


def test_partial_resource_override_merges_key_by_key() -> None:
    def raise_tester_memory(document: dict[str, Any]) -> None:
        document["spec"]["sandbox"] = {"testerResources": {"limits": {"memory": "4Gi"}}}

    run = load_run("generationrun-builtin.yaml", raise_tester_memory)
    assert container(sandbox_tester_job(run), "tester")["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "4Gi"},
    }
    assert container(generator_job(run), "generator")["resources"] == (
        BASE_SETTINGS.generator_resources
    )


def test_run_request_above_the_limit_is_refused_naming_the_field() -> None:
    def oversized_request(document: dict[str, Any]) -> None:
        document["spec"]["sandbox"] = {"generatorResources": {"requests": {"memory": "2Gi"}}}

    run = load_run("generationrun-builtin.yaml", oversized_request)
    with pytest.raises(SandboxBuildError, match=r"spec\.sandbox\.generatorResources: requests"):
        generator_job(run)


def test_run_without_uid_or_namespace_is_refused() -> None:
    document = run_document("generationrun-llm.yaml")
    del document["metadata"]["uid"]
    with pytest.raises(SandboxBuildError, match=r"metadata\.uid"):
        generator_job(GenerationRun.model_validate(document))


@pytest.mark.parametrize(
    ("deadline", "secret"), [(0, "todo-api-llm-gen-2"), (60, "Bad_Name"), (60, "")]
)
def test_bad_job_arguments_are_refused(deadline: int, secret: str) -> None:
    with pytest.raises(ValueError, match=r"deadline_seconds|instructions_secret"):
        build_generator_job(
            llm_run(), 1, BASE_SETTINGS, instructions_secret=secret, deadline_seconds=deadline
        )


def test_long_run_names_give_valid_label_values() -> None:
    def long_name(document: dict[str, Any]) -> None:
        document["metadata"]["name"] = "todo-api-" + "y" * 120

    job = generator_job(load_run("generationrun-builtin.yaml", long_name))
    value = job["metadata"]["labels"][LABEL_RUN]
    assert len(value) <= 63
    assert len(job["metadata"]["name"]) <= 63
    assert job["metadata"]["ownerReferences"][0]["name"] == "todo-api-" + "y" * 120


# ---------------------------------------------------------------- local models


def test_local_model_runs_a_gpu_native_sidecar_in_the_generator_pod() -> None:
    job = generator_job(local_model_run())
    pod = pod_of(job)
    (sidecar,) = pod["initContainers"]
    assert sidecar["name"] == "model-server"
    assert sidecar["restartPolicy"] == "Always"  # native sidecar: stops when the Job's work ends
    assert sidecar["image"] == QWEN.image
    assert sidecar["args"] == QWEN.args
    assert sidecar["ports"] == [{"name": "http", "containerPort": 8001, "protocol": "TCP"}]
    assert sidecar["resources"] == {
        "requests": {"cpu": "4", "memory": "24Gi"},
        "limits": {"memory": "32Gi", GPU_RESOURCE: "2"},
    }
    probe = sidecar["startupProbe"]
    assert probe["httpGet"] == {"path": "/health", "port": 8001}
    assert probe["periodSeconds"] * probe["failureThreshold"] >= QWEN.startup_timeout_seconds
    assert env_of(sidecar) == {"HOME": "/tmp", "TMPDIR": "/tmp", "HF_HUB_OFFLINE": "1"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == QWEN.tolerations
    assert env_of(container(job, "generator"))[LOCAL_MODEL_URL_ENV] == "http://127.0.0.1:8001/v1"
    # The generator itself gets no GPU; the sidecar scratch volumes are the server's own.
    assert GPU_RESOURCE not in json.dumps(container(job, "generator"))
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["model-shm"]["emptyDir"]["medium"] == "Memory"
    assert {mount["name"] for mount in sidecar["volumeMounts"]} == {"model-scratch", "model-shm"}


@pytest.mark.parametrize(
    "build", [lambda: sandbox_tester_job(local_model_run()), lambda: generator_job(llm_run())]
)
def test_gpus_only_where_a_local_model_generates(build: Callable[[], dict[str, Any]]) -> None:
    job = build()
    pod = pod_of(job)
    assert "initContainers" not in pod
    assert "nodeSelector" not in pod
    assert "tolerations" not in pod
    assert GPU_RESOURCE not in json.dumps(job)
    assert all(LOCAL_MODEL_URL_ENV not in env_of(item) for item in pod["containers"])


# ---------------------------------------------------------------- NetworkPolicies

DNS_RULE = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
}
GATEWAY_RULE = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "smartspec"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "smartspec-gateway"}},
        }
    ],
    "ports": [{"port": 8000, "protocol": "TCP"}],
}
S3_RULE = S3_EGRESS_ANY_HTTPS[0]


@pytest.mark.parametrize(
    ("run_factory", "role", "name", "egress"),
    [
        (llm_run, "generator", "todo-api-llm-sandbox-gen", [DNS_RULE, GATEWAY_RULE, S3_RULE]),
        (llm_run, "tester", "todo-api-llm-sandbox-test", [DNS_RULE, S3_RULE]),
        (
            local_model_run,
            "generator",
            "todo-api-llm-sandbox-gen",
            [DNS_RULE, GATEWAY_RULE, S3_RULE],
        ),
        # A builtin generator calls no model, so it does not reach the gateway either.
        (builtin_run, "generator", "todo-api-builtin-sandbox-gen", [DNS_RULE, S3_RULE]),
        (builtin_run, "tester", "todo-api-builtin-sandbox-test", [DNS_RULE, S3_RULE]),
    ],
)
def test_network_policy_egress_per_role(
    run_factory: Callable[[], GenerationRun],
    role: str,
    name: str,
    egress: list[dict[str, Any]],
) -> None:
    run = run_factory()
    policy = build_network_policy(run, BASE_SETTINGS, role)  # type: ignore[arg-type]
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["kind"] == "NetworkPolicy"
    assert policy["metadata"]["name"] == name
    assert policy["metadata"]["namespace"] == NAMESPACE
    assert policy["metadata"]["ownerReferences"][0]["uid"] == UID
    assert policy["metadata"]["labels"][LABEL_ROLE] == role
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {
            "smartspec.dev/run": run.metadata.name,
            "smartspec.dev/run-uid": UID,
            "smartspec.dev/role": role,
        }
    }
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    local_generator = run_factory is local_model_run and role == "generator"
    if not local_generator:
        assert policy["spec"]["ingress"] == []  # deny all ingress
    assert policy["spec"]["egress"] == egress


def test_only_the_gateway_reaches_a_local_model_sidecar() -> None:
    policy = build_network_policy(local_model_run(), BASE_SETTINGS, "generator")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 8001, "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "smartspec-gateway"}}
    tester = build_network_policy(local_model_run(), BASE_SETTINGS, "tester")
    assert tester["spec"]["ingress"] == []


def test_network_policies_select_the_pods_of_their_role() -> None:
    run = llm_run()
    generator_policy, tester_policy = build_network_policies(run, BASE_SETTINGS)
    for policy, job in (
        (generator_policy, generator_job(run)),
        (tester_policy, sandbox_tester_job(run)),
    ):
        pod_labels = job["spec"]["template"]["metadata"]["labels"]
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
    assert generator_policy["spec"]["podSelector"] != tester_policy["spec"]["podSelector"]


def test_gateway_and_storage_rules_follow_the_settings() -> None:
    minio = [
        {
            "to": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}},
                    "podSelector": {"matchLabels": {"app": "minio"}},
                }
            ],
            "ports": [{"port": 9000, "protocol": "TCP"}],
        }
    ]
    config = settings(
        gateway_namespace="llm",
        gateway_pod_labels={"app": "gw"},
        gateway_port=8443,
        s3_egress=minio,
    )
    egress = build_network_policy(llm_run(), config, SandboxRole.GENERATOR)["spec"]["egress"]
    assert egress[1]["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "llm"
    }
    assert egress[1]["to"][0]["podSelector"]["matchLabels"] == {"app": "gw"}
    assert egress[1]["ports"] == [{"port": 8443, "protocol": "TCP"}]
    assert egress[2:] == minio


# ---------------------------------------------------------------- instructions Secret


@pytest.mark.parametrize(
    ("role", "name"), [("generator", "todo-api-llm-gen-2"), ("tester", "todo-api-llm-test-2")]
)
def test_instructions_secret_encodes_the_document(role: str, name: str) -> None:
    instructions = json.dumps({"role": role, "run": {"attempt": 2}, "note": "é"}).encode()
    secret = build_instructions_secret(llm_run(), 2, role, instructions)  # type: ignore[arg-type]
    assert secret["apiVersion"] == "v1"
    assert secret["kind"] == "Secret"
    assert secret["type"] == "Opaque"
    assert secret["immutable"] is True
    assert secret["metadata"]["name"] == name
    assert secret["metadata"]["labels"] == run_labels(llm_run(), role, 2)  # type: ignore[arg-type]
    assert secret["metadata"]["labels"][LABEL_CORRELATION_ID] == UID
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "GenerationRun"
    assert list(secret["data"]) == ["instructions.json"]
    assert base64.b64decode(secret["data"]["instructions.json"]) == instructions
    # The Job of the same role and attempt mounts exactly this Secret.
    job = generator_job(llm_run()) if role == "generator" else sandbox_tester_job(llm_run())
    assert pod_of(job)["volumes"][2]["secret"]["secretName"] == name


@pytest.mark.parametrize(
    ("instructions", "message"),
    [
        (b'{"role": "tester"}', "role generator"),
        (b"[1, 2]", "JSON object"),
        (b"not json", "not JSON"),
        (b'{"role": "generator", "pad": "' + b"x" * (1024 * 1024) + b'"}', "at most"),
    ],
)
def test_instructions_secret_refuses_bad_documents(instructions: bytes, message: str) -> None:
    with pytest.raises(SandboxBuildError, match=message):
        build_instructions_secret(llm_run(), 1, "gen", instructions)


# ---------------------------------------------------------------- settings validation

BAD_SETTINGS: list[tuple[dict[str, Any], str]] = [
    ({"generator_image": ""}, "generator_image must not be empty"),
    ({"tester_image": ""}, "tester_image must not be empty"),
    ({"image_pull_policy": "Sometimes"}, "image_pull_policy must be"),
    ({"generator_resources": {"requests": {"cpu": "lots"}}}, r"requests\.cpu must be a resource"),
    ({"tester_resources": {"limits": {"cpu": "1"}, "extra": {}}}, "only requests and limits"),
    (
        {"tester_resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}},
        "requests.memory 2Gi exceeds limits.memory 1Gi",
    ),
    ({"runtime_class_name": "G Visor"}, "runtime_class_name must be a DNS label"),
    ({"ttl_seconds_after_finished": -1}, "ttl_seconds_after_finished"),
    ({"workspace_size_limit": "big"}, "workspace_size_limit must be a resource quantity"),
    ({"run_as_user": 0}, "run_as_user must be a non-root uid"),
    ({"gateway_namespace": "Smart_Spec"}, "gateway_namespace must be a DNS label"),
    ({"gateway_pod_labels": {}}, "gateway_pod_labels must not be empty"),
    ({"gateway_port": 70000}, "gateway_port must be an integer 1..65535"),
    ({"s3_egress": []}, "s3_egress must not be empty"),
    ({"s3_egress": [{"ports": [{"port": 443}]}]}, "allows all egress"),
    ({"s3_egress": [{"to": [{}]}]}, "must set ipBlock"),
    ({"s3_egress": [{"to": [{"ipBlock": {}}]}]}, "needs a cidr"),
    (
        {"s3_egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 0}]}]},
        "port must be 1..65535",
    ),
    ({"dns_egress": [{"to": [{"podSelector": {}}], "ports": [{"protocol": "ICMP"}]}]}, "TCP, UDP"),
    ({"local_models": {"other-name": QWEN}}, "differs from its model"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_SETTINGS)
def test_sandbox_settings_validation(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings(**changes)


BAD_LOCAL_MODELS: list[tuple[dict[str, Any], str]] = [
    ({"model": ""}, "model must not be empty"),
    ({"image": ""}, "image must not be empty"),
    ({"gpu_count": 0}, "gpu_count must be an integer >= 1"),
    ({"gpu_count": True}, "gpu_count must be an integer >= 1"),
    ({"port": 0}, "port must be an integer 1..65535"),
    ({"resources": {"limits": {GPU_RESOURCE: "1"}}}, "set gpu_count instead"),
    ({"startup_probe_path": "health"}, "must start with '/'"),
    ({"startup_timeout_seconds": 0}, "startup_timeout_seconds"),
    ({"tolerations": [{"key": "gpu", "operator": "Maybe"}]}, "operator must be"),
    ({"tolerations": [{"key": "gpu", "colour": "red"}]}, "unknown keys"),
    ({"node_selector": {"gpu": 1}}, "node_selector must map strings"),
    ({"args": ["--port", 8001]}, "args must be strings"),
    ({"shm_size_limit": "lots"}, "shm_size_limit must be a resource quantity"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_LOCAL_MODELS)
def test_local_model_settings_validation(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(QWEN, **changes)


def test_default_settings_are_valid_and_restrictive() -> None:
    config = SandboxSettings(
        generator_image="g:1", tester_image="t:1", s3_egress=S3_EGRESS_ANY_HTTPS
    )
    assert config.generator_resources == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    assert config.runtime_class_name is None
    assert config.run_as_user == 65532
    assert config.dns_egress == [DNS_RULE]
    # Defaults are copies: one settings object cannot change another's.
    config.generator_resources["limits"]["cpu"] = "9"
    assert BASE_SETTINGS.generator_resources["limits"]["cpu"] == "1"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Fraction(1, 2)),
        ("2", Fraction(2)),
        ("1.5", Fraction(3, 2)),
        ("1Gi", Fraction(2**30)),
        ("256Mi", Fraction(2**28)),
        ("1G", Fraction(10**9)),
        ("3k", Fraction(3000)),
    ],
)
def test_quantity_values(text: str, value: Fraction) -> None:
    assert quantity_value(text) == value

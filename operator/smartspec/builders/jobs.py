"""Sandbox Jobs, their instructions Secrets and NetworkPolicies for one GenerationRun.

Contract: specs/CORE-004-generation-runs.md, section "Sandbox contract", and
specs/CORE-001-resources.md (GenerationRun `spec.sandbox`; Job names `<run>-gen-<k>` and
`<run>-test-<k>`).

Every attempt runs two Jobs: the generator writes code, the tester runs the generated tests.
Both read one JSON instructions document from a Secret mounted read-only at
`SMARTSPEC_INSTRUCTIONS_FILE`; neither holds any credential beyond what that document carries.
The pods satisfy Pod Security "restricted" (latest): non-root, no privilege escalation, every
capability dropped, RuntimeDefault seccomp, a read-only root filesystem with emptyDir scratch
space, no service-account token and no service links. Egress is cut down to DNS, storage and
(generator of an llm run only) the LLM gateway; ingress is denied.

The operator owns retries (each attempt is a new Job), so every Job has `backoffLimit: 0`.
Everything here is pure: a run and settings in, plain dicts ready to POST out.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, TypeGuard

from smartspec.api.v1alpha1 import API_VERSION, GenerationRun
from smartspec.api.v1alpha1.common import DNS_LABEL_PATTERN, QUANTITY_PATTERN
from smartspec.api.v1alpha1.generationrun import Backend, ResourceRequirements
from smartspec.builders.agent_job import RUN_TOKEN_KEY, add_agent
from smartspec.logic.naming import (
    DNS_LABEL_MAX_LENGTH,
    RoleLike,
    SandboxRole,
    checked_attempt,
    generator_job_name,
    instructions_secret_name,
    job_name,
    label_value,
    network_policy_name,
    sandbox_role,
    test_job_name,
)

Manifest = dict[str, Any]

__all__ = [
    "RoleLike",
    "SandboxRole",
    "generator_job_name",
    "instructions_secret_name",
    "job_name",
    "network_policy_name",
    "test_job_name",
]


class SandboxBuildError(ValueError):
    """The run asks for a sandbox that cannot be built (permanent: retrying will not help)."""


# ---------------------------------------------------------------- constants

SANDBOX_APP = "smartspec-sandbox"
MANAGED_BY = "smartspec"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_RUN = "smartspec.dev/run"
LABEL_RUN_UID = "smartspec.dev/run-uid"
LABEL_ATTEMPT = "smartspec.dev/attempt"
LABEL_ROLE = "smartspec.dev/role"
LABEL_CORRELATION_ID = "smartspec.dev/correlation-id"

INSTRUCTIONS_KEY = "instructions.json"
INSTRUCTIONS_DIR = "/var/run/smartspec"
INSTRUCTIONS_FILE = f"{INSTRUCTIONS_DIR}/{INSTRUCTIONS_KEY}"
INSTRUCTIONS_FILE_ENV = "SMARTSPEC_INSTRUCTIONS_FILE"
LOCAL_MODEL_URL_ENV = "SMARTSPEC_LOCAL_MODEL_URL"
WORKSPACE_DIR = "/workspace"
TMP_DIR = "/tmp"  # noqa: S108 (a private emptyDir, not the node's /tmp)
TMP_SIZE_LIMIT = "256Mi"
SHM_DIR = "/dev/shm"  # noqa: S108 (a private memory-backed emptyDir)
# Owner read-only; with fsGroup the kubelet adds group read, which is how uid 65532 reads it.
INSTRUCTIONS_FILE_MODE = 0o400
# The API server refuses a Secret whose data exceeds 1 MiB.
MAX_INSTRUCTIONS_BYTES = 1024 * 1024

GENERATOR_COMMAND = ("python", "-m", "smartspec.sandbox.generator")
TESTER_COMMAND = ("python", "-m", "smartspec.sandbox.tester")
MODEL_SERVER_CONTAINER = "model-server"
GPU_RESOURCE = "nvidia.com/gpu"
STARTUP_PROBE_PERIOD_SECONDS = 5

_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)
_QUANTITY = re.compile(QUANTITY_PATTERN)
_DIGEST_LENGTH = 8

DEFAULT_SANDBOX_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}
DEFAULT_DNS_EGRESS: list[dict[str, Any]] = [
    {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
    }
]
S3_EGRESS_ANY_HTTPS: list[dict[str, Any]] = [
    {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
]
"""Egress to any HTTPS host: for external S3, whose addresses cannot be pinned. Narrow it
(an in-cluster MinIO's namespace and pod labels, or the provider's ranges) where possible."""

DEFAULT_GATEWAY_NAMESPACE = "smartspec"
DEFAULT_GATEWAY_POD_LABELS = {"app.kubernetes.io/name": "smartspec-gateway"}


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class LocalModelSettings:
    """A model served inside the generator pod by a GPU sidecar (e.g. vLLM).

    The server image must run as a non-root user with a read-only root filesystem: it gets
    HOME and TMPDIR on a private scratch emptyDir, and must have its weights baked in (the
    sandbox's egress reaches no model hub).
    """

    model: str
    """Model name as runs name it in `spec.generator.model`."""
    image: str
    """Model server image."""
    args: list[str] = field(default_factory=list)
    """Arguments of the server (the image's entrypoint is kept)."""
    port: int = 8001
    """Port the server listens on, on the pod's loopback and interfaces."""
    gpu_count: int = 1
    """GPUs the server needs (`nvidia.com/gpu` limit)."""
    node_selector: dict[str, str] = field(default_factory=dict)
    """Where GPU nodes are, e.g. {"nvidia.com/gpu.present": "true"}."""
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    """Tolerations for the GPU nodes' taints."""
    resources: dict[str, dict[str, str]] = field(default_factory=dict)
    """requests/limits of the server besides the GPUs (cpu, memory, ...)."""
    startup_probe_path: str = "/health"
    """HTTP path that answers 200 once the model is loaded."""
    startup_timeout_seconds: int = 600
    """How long loading may take before the pod fails."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment of the server, e.g. {"HF_HUB_OFFLINE": "1"}."""
    scratch_size_limit: str = "2Gi"
    """Size of the server's writable /tmp (also its HOME, for caches)."""
    shm_size_limit: str = "1Gi"
    """Size of the memory-backed /dev/shm (tensor parallelism needs more than the default)."""

    def __post_init__(self) -> None:
        where = f"local model {self.model!r}"
        _require(bool(self.model), "local model: model must not be empty")
        _require(bool(self.image), f"{where}: image must not be empty")
        _require(all(isinstance(arg, str) for arg in self.args), f"{where}: args must be strings")
        _check_port(f"{where}: port", self.port)
        _require(
            _is_int(self.gpu_count) and self.gpu_count >= 1,
            f"{where}: gpu_count must be an integer >= 1, got {self.gpu_count!r}",
        )
        _check_string_map(f"{where}: node_selector", self.node_selector)
        _check_tolerations(f"{where}: tolerations", self.tolerations)
        _check_resources(f"{where}: resources", self.resources)
        _require(
            not any(GPU_RESOURCE in section for section in self.resources.values()),
            f"{where}: resources must not name {GPU_RESOURCE}; set gpu_count instead",
        )
        _require(
            self.startup_probe_path.startswith("/"),
            f"{where}: startup_probe_path must start with '/', got {self.startup_probe_path!r}",
        )
        _require(
            _is_int(self.startup_timeout_seconds) and self.startup_timeout_seconds >= 1,
            f"{where}: startup_timeout_seconds must be an integer >= 1",
        )
        _check_string_map(f"{where}: env", self.env)
        _check_quantity(f"{where}: scratch_size_limit", self.scratch_size_limit)
        _check_quantity(f"{where}: shm_size_limit", self.shm_size_limit)


@dataclass(frozen=True)
class SandboxSettings:
    """Operator-wide defaults of the sandbox Jobs; a run's `spec.sandbox` overrides some."""

    generator_image: str
    """Image holding `smartspec.sandbox.generator`."""
    tester_image: str
    """Image holding `smartspec.sandbox.tester` and the test toolchain."""
    s3_egress: list[dict[str, Any]]
    """NetworkPolicy egress rules that reach the object store (presigned URLs). Required:
    S3 may be in-cluster (MinIO: namespace and pod selectors) or external (ipBlock, 443);
    `S3_EGRESS_ANY_HTTPS` is the broad choice for the latter."""
    image_pull_policy: str = "IfNotPresent"
    generator_resources: dict[str, dict[str, str]] = field(
        default_factory=lambda: copy.deepcopy(DEFAULT_SANDBOX_RESOURCES)
    )
    """Default requests/limits of the generator container."""
    tester_resources: dict[str, dict[str, str]] = field(
        default_factory=lambda: copy.deepcopy(DEFAULT_SANDBOX_RESOURCES)
    )
    """Default requests/limits of the tester container."""
    runtime_class_name: str | None = None
    """Default RuntimeClass (e.g. gvisor); a run's spec.sandbox.runtimeClassName wins."""
    ttl_seconds_after_finished: int = 3600
    """How long finished Jobs (and their pods' logs) stay for inspection."""
    workspace_size_limit: str = "1Gi"
    run_as_user: int = 65532
    """Non-root uid (and gid, fsGroup) of every sandbox container."""
    gateway_namespace: str = DEFAULT_GATEWAY_NAMESPACE
    gateway_pod_labels: dict[str, str] = field(
        default_factory=lambda: dict(DEFAULT_GATEWAY_POD_LABELS)
    )
    gateway_port: int = 8000
    """The gateway pods' container port: NetworkPolicy sees the pod port, not the Service's."""
    dns_egress: list[dict[str, Any]] = field(
        default_factory=lambda: copy.deepcopy(DEFAULT_DNS_EGRESS)
    )
    local_models: dict[str, LocalModelSettings] = field(default_factory=dict)
    """Models served by a GPU sidecar in the generator pod, by model name."""
    agent_images: tuple[str, ...] = ()
    """Shell patterns of the agent images runs may name; empty: no agent runs at all."""

    def __post_init__(self) -> None:
        _require(bool(self.generator_image), "sandbox: generator_image must not be empty")
        _require(bool(self.tester_image), "sandbox: tester_image must not be empty")
        _require(
            self.image_pull_policy in {"Always", "IfNotPresent", "Never"},
            "sandbox: image_pull_policy must be Always, IfNotPresent or Never, "
            f"got {self.image_pull_policy!r}",
        )
        _check_resources("sandbox: generator_resources", self.generator_resources)
        _check_resources("sandbox: tester_resources", self.tester_resources)
        if self.runtime_class_name is not None:
            _check_dns_label("sandbox: runtime_class_name", self.runtime_class_name)
        _require(
            _is_int(self.ttl_seconds_after_finished) and self.ttl_seconds_after_finished >= 0,
            "sandbox: ttl_seconds_after_finished must be an integer >= 0",
        )
        _check_quantity("sandbox: workspace_size_limit", self.workspace_size_limit)
        _require(
            _is_int(self.run_as_user) and self.run_as_user >= 1,
            f"sandbox: run_as_user must be a non-root uid (>= 1), got {self.run_as_user!r}",
        )
        _check_dns_label("sandbox: gateway_namespace", self.gateway_namespace)
        # An empty selector would open the gateway rule to every pod of that namespace.
        _require(bool(self.gateway_pod_labels), "sandbox: gateway_pod_labels must not be empty")
        _check_string_map("sandbox: gateway_pod_labels", self.gateway_pod_labels)
        _check_port("sandbox: gateway_port", self.gateway_port)
        _require(
            bool(self.s3_egress), "sandbox: s3_egress must not be empty (sandboxes need storage)"
        )
        _check_egress_rules("sandbox: s3_egress", self.s3_egress)
        _check_egress_rules("sandbox: dns_egress", self.dns_egress)
        _require(
            all(isinstance(image, str) and image for image in self.agent_images),
            "sandbox: agent_images must be non-empty strings",
        )
        for name, model in self.local_models.items():
            _require(
                isinstance(model, LocalModelSettings),
                f"sandbox: local_models[{name!r}] must be a LocalModelSettings",
            )
            _require(
                name == model.model,
                f"sandbox: local_models key {name!r} differs from its model {model.model!r}",
            )


# ---------------------------------------------------------------- metadata


def run_labels(run: GenerationRun, role: RoleLike, attempt: int | None = None) -> dict[str, str]:
    """Labels of every sandbox object; the run uid doubles as the correlation id in logs."""
    name, _, uid = _identity(run)
    labels = {
        LABEL_NAME: SANDBOX_APP,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_RUN: label_value(name),
        LABEL_RUN_UID: uid,
    }
    if attempt is not None:
        labels[LABEL_ATTEMPT] = str(checked_attempt(attempt))
    labels[LABEL_ROLE] = sandbox_role(role).value
    labels[LABEL_CORRELATION_ID] = uid
    return labels


def owner_reference(run: GenerationRun) -> dict[str, Any]:
    """The run controls what it owns: deleting it collects Jobs, Secrets and policies."""
    name, _, uid = _identity(run)
    return {
        "apiVersion": API_VERSION,
        "kind": run.KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(run: GenerationRun, name: str, labels: dict[str, str]) -> dict[str, Any]:
    _, namespace, _ = _identity(run)
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(run)],
    }


def _identity(run: GenerationRun) -> tuple[str, str, str]:
    # Only an object read back from the API server has both; owner references need the uid.
    namespace, uid = run.metadata.namespace, run.metadata.uid
    if not namespace or not uid:
        raise SandboxBuildError(
            f"GenerationRun {run.metadata.name!r} has no metadata.namespace or metadata.uid; "
            "build sandboxes from the object as stored by the API server"
        )
    return run.metadata.name, namespace, uid


# ---------------------------------------------------------------- Jobs


def agent_image_allowed(image: str, settings: SandboxSettings) -> bool:
    """Whether a platform admin allowed this agent image (SMARTSPEC_AGENT_IMAGES)."""
    return any(fnmatch.fnmatchcase(image, pattern) for pattern in settings.agent_images)


def local_model_for(run: GenerationRun, settings: SandboxSettings) -> LocalModelSettings | None:
    """The sidecar-served model the run's generator needs, if its model is a local one."""
    generator = run.spec.generator
    if generator.backend is not Backend.LLM or generator.model is None:
        return None
    return settings.local_models.get(generator.model)


def build_generator_job(
    run: GenerationRun,
    attempt: int,
    settings: SandboxSettings,
    *,
    instructions_secret: str,
    deadline_seconds: int,
    gateway_base_url: str | None = None,
) -> Manifest:
    """The generator Job of one attempt (with a GPU model-server sidecar for local models,
    or the run's coding agent between prepare and finish: `gateway_base_url` required)."""
    job = _build_job(
        run,
        attempt,
        settings,
        SandboxRole.GENERATOR,
        instructions_secret=instructions_secret,
        deadline_seconds=deadline_seconds,
    )
    if run.spec.generator.backend is Backend.AGENT:
        if not gateway_base_url:
            raise SandboxBuildError("an agent run's generator Job needs the gateway's base URL")
        pod = job["spec"]["template"]["spec"]
        add_agent(
            run,
            pod,
            pod["containers"][0],
            instructions_secret=instructions_secret,
            gateway_base_url=gateway_base_url,
            deadline_seconds=deadline_seconds,
        )
    return job


def build_test_job(
    run: GenerationRun,
    attempt: int,
    settings: SandboxSettings,
    *,
    instructions_secret: str,
    deadline_seconds: int,
) -> Manifest:
    """The tester Job of one attempt: runs the generated tests, never gets a GPU."""
    return _build_job(
        run,
        attempt,
        settings,
        SandboxRole.TESTER,
        instructions_secret=instructions_secret,
        deadline_seconds=deadline_seconds,
    )


def _build_job(
    run: GenerationRun,
    attempt: int,
    settings: SandboxSettings,
    role: SandboxRole,
    *,
    instructions_secret: str,
    deadline_seconds: int,
) -> Manifest:
    if not _is_int(deadline_seconds) or deadline_seconds < 1:
        raise ValueError(f"deadline_seconds must be an integer >= 1, got {deadline_seconds!r}")
    if not _is_subdomain(instructions_secret):
        raise ValueError(f"instructions_secret is not a valid Secret name: {instructions_secret!r}")
    labels = run_labels(run, role, attempt)
    name = job_name(run.metadata.name, attempt, role)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(run, name, labels),
        "spec": {
            # The operator owns retries: a failed attempt feeds the next one, never a re-run.
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline_seconds,
            "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": _pod_spec(run, settings, role, instructions_secret),
            },
        },
    }


def _pod_spec(
    run: GenerationRun, settings: SandboxSettings, role: SandboxRole, instructions_secret: str
) -> dict[str, Any]:
    uid = settings.run_as_user
    env = [
        {"name": INSTRUCTIONS_FILE_ENV, "value": INSTRUCTIONS_FILE},
        {"name": "HOME", "value": WORKSPACE_DIR},
        {"name": "TMPDIR", "value": TMP_DIR},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]
    sandbox = run.spec.sandbox
    if role is SandboxRole.GENERATOR:
        image, command = settings.generator_image, GENERATOR_COMMAND
        defaults = settings.generator_resources
        override = sandbox.generator_resources if sandbox is not None else None
        override_field = "generatorResources"
    else:
        image, command = settings.tester_image, TESTER_COMMAND
        defaults = settings.tester_resources
        override = sandbox.tester_resources if sandbox is not None else None
        override_field = "testerResources"
    container: dict[str, Any] = {
        "name": role.value,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(command),
        "env": env,
        "workingDir": WORKSPACE_DIR,
        # The program's last stdout line (its JSON result) becomes the pod's termination
        # message on failure, which is how the operator learns why an attempt failed.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": _container_security_context(),
        "resources": _merged_resources(defaults, override, f"spec.sandbox.{override_field}"),
        "volumeMounts": [
            {"name": "workspace", "mountPath": WORKSPACE_DIR},
            {"name": "tmp", "mountPath": TMP_DIR},
            {"name": "instructions", "mountPath": INSTRUCTIONS_DIR, "readOnly": True},
        ],
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # fsGroup also makes the root-owned, 0400 instructions file group-readable to uid.
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "workspace", "emptyDir": {"sizeLimit": settings.workspace_size_limit}},
            {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
            {
                "name": "instructions",
                "secret": {
                    "secretName": instructions_secret,
                    "defaultMode": INSTRUCTIONS_FILE_MODE,
                    "items": [{"key": INSTRUCTIONS_KEY, "path": INSTRUCTIONS_KEY}],
                },
            },
        ],
    }
    runtime_class = (
        sandbox.runtime_class_name
        if sandbox is not None and sandbox.runtime_class_name is not None
        else settings.runtime_class_name
    )
    if runtime_class is not None:
        pod["runtimeClassName"] = runtime_class
    model = local_model_for(run, settings) if role is SandboxRole.GENERATOR else None
    if model is not None:
        _add_model_server(pod, container, model)
    return pod


def _add_model_server(
    pod: dict[str, Any], generator: dict[str, Any], model: LocalModelSettings
) -> None:
    """Serve the model beside the generator: a native sidecar, GPU nodes, GPU limits.

    A native sidecar (an init container with restartPolicy Always, Kubernetes 1.29+) starts
    before the generator, holds it back until its startup probe passes, and is stopped when
    the generator exits, so the Job still completes.
    """
    resources = copy.deepcopy(model.resources)
    resources.setdefault("limits", {})[GPU_RESOURCE] = str(model.gpu_count)
    env = {"HOME": TMP_DIR, "TMPDIR": TMP_DIR} | model.env
    pod["initContainers"] = [
        {
            "name": MODEL_SERVER_CONTAINER,
            "image": model.image,
            "imagePullPolicy": generator["imagePullPolicy"],
            "args": list(model.args),
            "restartPolicy": "Always",
            "env": [{"name": key, "value": value} for key, value in env.items()],
            "ports": [{"name": "http", "containerPort": model.port, "protocol": "TCP"}],
            "startupProbe": {
                "httpGet": {"path": model.startup_probe_path, "port": model.port},
                "periodSeconds": STARTUP_PROBE_PERIOD_SECONDS,
                "failureThreshold": math.ceil(
                    model.startup_timeout_seconds / STARTUP_PROBE_PERIOD_SECONDS
                ),
            },
            "securityContext": _container_security_context(),
            "resources": resources,
            "volumeMounts": [
                {"name": "model-scratch", "mountPath": TMP_DIR},
                {"name": "model-shm", "mountPath": SHM_DIR},
            ],
        }
    ]
    # The server gets its own scratch: the generator's workspace is not its business.
    pod["volumes"] += [
        {"name": "model-scratch", "emptyDir": {"sizeLimit": model.scratch_size_limit}},
        {"name": "model-shm", "emptyDir": {"medium": "Memory", "sizeLimit": model.shm_size_limit}},
    ]
    if model.node_selector:
        pod["nodeSelector"] = dict(model.node_selector)
    if model.tolerations:
        pod["tolerations"] = copy.deepcopy(model.tolerations)
    # The gateway still carries every model call (budget, ledger, transcripts); this URL only
    # tells the generator where the sidecar listens, so it can announce it to the gateway.
    generator["env"].append(
        {"name": LOCAL_MODEL_URL_ENV, "value": f"http://127.0.0.1:{model.port}/v1"}
    )


def _container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _merged_resources(
    defaults: dict[str, dict[str, str]], override: ResourceRequirements | None, where: str
) -> dict[str, dict[str, str]]:
    """The run's cpu/memory requests and limits over the settings' defaults, key by key."""
    merged = copy.deepcopy(defaults)
    if override is not None:
        for section in ("requests", "limits"):
            values = getattr(override, section)
            if values is None:
                continue
            for key in ("cpu", "memory"):
                value = getattr(values, key)
                if value is not None:
                    merged.setdefault(section, {})[key] = value
    # The API server would refuse the Job anyway; refusing here names the run's field.
    problem = _requests_over_limits(merged)
    if problem is not None:
        raise SandboxBuildError(f"{where}: {problem}")
    return merged


# ---------------------------------------------------------------- NetworkPolicies


def build_network_policies(run: GenerationRun, settings: SandboxSettings) -> list[Manifest]:
    """Both policies of a run: generator first, then tester."""
    return [build_network_policy(run, settings, role) for role in SandboxRole]


def build_network_policy(run: GenerationRun, settings: SandboxSettings, role: RoleLike) -> Manifest:
    """Deny all ingress; allow egress to DNS, storage and (llm or agent generator only) the gateway.

    One policy per role and run, covering every attempt. The tester runs untrusted generated
    code, so it never reaches the gateway; neither does a builtin generator, which calls no
    model.
    """
    the_role = sandbox_role(role)
    labels = run_labels(run, the_role)
    egress = copy.deepcopy(settings.dns_egress)
    if the_role is SandboxRole.GENERATOR and run.spec.generator.backend.calls_models:
        egress.append(
            {
                "to": [_gateway_peer(settings)],
                "ports": [{"port": settings.gateway_port, "protocol": "TCP"}],
            }
        )
    egress += copy.deepcopy(settings.s3_egress)
    ingress: list[dict[str, Any]] = []
    local = local_model_for(run, settings) if the_role is SandboxRole.GENERATOR else None
    if local is not None:
        # The gateway carries every model call, including to this pod's model-server sidecar.
        ingress.append(
            {"from": [_gateway_peer(settings)], "ports": [{"port": local.port, "protocol": "TCP"}]}
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(run, network_policy_name(run.metadata.name, the_role), labels),
        "spec": {
            # The uid, too: a pod left by an earlier run of the same name is not this run's.
            "podSelector": {
                "matchLabels": {
                    LABEL_RUN: labels[LABEL_RUN],
                    LABEL_RUN_UID: labels[LABEL_RUN_UID],
                    LABEL_ROLE: labels[LABEL_ROLE],
                }
            },
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }


def _gateway_peer(settings: SandboxSettings) -> dict[str, Any]:
    return {
        "namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": settings.gateway_namespace}
        },
        "podSelector": {"matchLabels": dict(settings.gateway_pod_labels)},
    }


# ---------------------------------------------------------------- Secrets


def build_instructions_secret(
    run: GenerationRun, attempt: int, role: RoleLike, instructions: bytes
) -> Manifest:
    """The immutable Secret the attempt's Job mounts; it holds the run token (generator)."""
    the_role = sandbox_role(role)
    if len(instructions) > MAX_INSTRUCTIONS_BYTES:
        raise SandboxBuildError(
            f"instructions are {len(instructions)} bytes; a Secret holds at most "
            f"{MAX_INSTRUCTIONS_BYTES}"
        )
    # A cheap guard against mounting the other role's document (CORE-004 "Sandbox contract").
    try:
        document = json.loads(instructions)
    except ValueError as error:
        raise SandboxBuildError(f"instructions are not JSON: {error}") from None
    if not isinstance(document, dict) or document.get("role") != the_role.value:
        raise SandboxBuildError(f"instructions must be a JSON object with role {the_role}")
    name = instructions_secret_name(run.metadata.name, attempt, the_role)
    data = {INSTRUCTIONS_KEY: base64.b64encode(instructions).decode("ascii")}
    if the_role is SandboxRole.GENERATOR and run.spec.generator.backend is Backend.AGENT:
        # The agent's env reads the token alone; it never mounts the document (upload URLs).
        token = (document.get("gateway") or {}).get("token")
        if not isinstance(token, str) or not token:
            raise SandboxBuildError("an agent run's generator instructions carry no run token")
        data[RUN_TOKEN_KEY] = base64.b64encode(token.encode("ascii")).decode("ascii")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(run, name, run_labels(run, the_role, attempt)),
        "type": "Opaque",
        # An attempt's instructions never change; immutability also spares kubelet watches.
        "immutable": True,
        "data": data,
    }


# ---------------------------------------------------------------- validation helpers

_QUANTITY_MULTIPLIERS: dict[str, Fraction] = {
    "": Fraction(1),
    "m": Fraction(1, 1000),
    **{suffix: Fraction(1000**power) for power, suffix in enumerate("kMGTPE", start=1)},
    **{f"{suffix}i": Fraction(1024**power) for power, suffix in enumerate("KMGTPE", start=1)},
}
_TOLERATION_KEYS = frozenset({"key", "operator", "value", "effect", "tolerationSeconds"})
_TOLERATION_EFFECTS = frozenset({"NoSchedule", "PreferNoSchedule", "NoExecute"})
_PEER_KEYS = frozenset({"ipBlock", "namespaceSelector", "podSelector"})
_PORT_KEYS = frozenset({"port", "endPort", "protocol"})


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_subdomain(value: str) -> bool:
    return len(value) <= 253 and all(_DNS_LABEL.fullmatch(part) for part in value.split("."))


def _check_dns_label(where: str, value: object) -> None:
    _require(
        isinstance(value, str)
        and len(value) <= DNS_LABEL_MAX_LENGTH
        and _DNS_LABEL.fullmatch(value) is not None,
        f"{where} must be a DNS label, got {value!r}",
    )


def _check_port(where: str, value: object) -> None:
    _require(
        _is_int(value) and 1 <= value <= 65535,
        f"{where} must be an integer 1..65535, got {value!r}",
    )


def _check_string_map(where: str, value: object) -> None:
    _require(
        isinstance(value, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()),
        f"{where} must map strings to strings",
    )


def quantity_value(text: str) -> Fraction:
    """The exact value of a Kubernetes quantity such as 500m, 2 or 1Gi."""
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(f"not a resource quantity: {text!r}")
    suffix = match.group(2) or ""
    return Fraction(text[: len(text) - len(suffix)]) * _QUANTITY_MULTIPLIERS[suffix]


def _check_quantity(where: str, value: object) -> None:
    _require(
        isinstance(value, str) and _QUANTITY.fullmatch(value) is not None,
        f"{where} must be a resource quantity such as 500m or 1Gi, got {value!r}",
    )


def _check_resources(where: str, resources: object) -> None:
    if not isinstance(resources, dict):
        raise ValueError(f"{where} must be a mapping with requests and limits")
    unknown = set(resources) - {"requests", "limits"}
    _require(not unknown, f"{where}: only requests and limits are allowed, got {sorted(unknown)}")
    for section, values in resources.items():
        if not isinstance(values, dict):
            raise ValueError(f"{where}.{section} must map resources to quantities")
        for key, value in values.items():
            _check_quantity(f"{where}.{section}.{key}", value)
    problem = _requests_over_limits(resources)
    _require(problem is None, f"{where}: {problem}")


def _requests_over_limits(resources: dict[str, dict[str, str]]) -> str | None:
    requests, limits = resources.get("requests", {}), resources.get("limits", {})
    for key in sorted(set(requests) & set(limits)):
        if quantity_value(requests[key]) > quantity_value(limits[key]):
            return f"requests.{key} {requests[key]} exceeds limits.{key} {limits[key]}"
    return None


def _check_tolerations(where: str, tolerations: object) -> None:
    if not isinstance(tolerations, list):
        raise ValueError(f"{where} must be a list")
    for index, toleration in enumerate(tolerations):
        item = f"{where}[{index}]"
        if not isinstance(toleration, dict):
            raise ValueError(f"{item} must be a mapping")
        unknown = set(toleration) - _TOLERATION_KEYS
        _require(not unknown, f"{item}: unknown keys {sorted(unknown)}")
        _require(
            toleration.get("operator", "Equal") in {"Equal", "Exists"},
            f"{item}: operator must be Equal or Exists",
        )
        _require(
            toleration.get("effect", "NoSchedule") in _TOLERATION_EFFECTS,
            f"{item}: effect must be one of {sorted(_TOLERATION_EFFECTS)}",
        )


def _check_egress_rules(where: str, rules: object) -> None:
    if not isinstance(rules, list):
        raise ValueError(f"{where} must be a list of egress rules")
    for index, rule in enumerate(rules):
        item = f"{where}[{index}]"
        if not isinstance(rule, dict):
            raise ValueError(f"{item} must be a mapping with to and ports")
        unknown = set(rule) - {"to", "ports"}
        _require(not unknown, f"{item}: unknown keys {sorted(unknown)}")
        # A rule without peers allows every destination: never what a sandbox should get.
        peers = rule.get("to")
        if not isinstance(peers, list) or not peers:
            raise ValueError(
                f"{item}: 'to' must list at least one peer (an empty 'to' allows all egress)"
            )
        for peer_index, peer in enumerate(peers):
            _require(
                isinstance(peer, dict) and bool(peer) and set(peer) <= _PEER_KEYS,
                f"{item}.to[{peer_index}] must set ipBlock, namespaceSelector or podSelector",
            )
            block = peer.get("ipBlock")
            _require(
                block is None or (isinstance(block, dict) and isinstance(block.get("cidr"), str)),
                f"{item}.to[{peer_index}].ipBlock needs a cidr",
            )
        ports = rule.get("ports", [])
        if not isinstance(ports, list):
            raise ValueError(f"{item}: ports must be a list")
        for port_index, port in enumerate(ports):
            entry = f"{item}.ports[{port_index}]"
            _require(isinstance(port, dict) and set(port) <= _PORT_KEYS, f"{entry}: bad keys")
            _require(
                port.get("protocol", "TCP") in {"TCP", "UDP", "SCTP"},
                f"{entry}: protocol must be TCP, UDP or SCTP",
            )
            number = port.get("port")
            _require(
                number is None
                or (isinstance(number, str) and bool(number))
                or (_is_int(number) and 1 <= number <= 65535),
                f"{entry}: port must be 1..65535 or a port name, got {number!r}",
            )

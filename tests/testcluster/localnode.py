"""A TEST-ONLY "local node": binds Pods and runs their commands as LOCAL SUBPROCESSES.

    !!!  NO CONTAINER ISOLATION WHATSOEVER.  !!!
    The Pod's image is ignored; its command runs directly on this machine, as the user
    running the tests, with the host's filesystem and network. securityContext, volumes,
    resources, probes and init containers are NOT enforced or supported. Use it only in
    tests and in the local demo, against a throw-away control plane that nothing else
    schedules onto. Never point it at a real cluster.

What it does, playing kube-scheduler and kubelet just enough for the real Job controller
(in kube-controller-manager) to drive Jobs to Complete/Failed:

* registers a Node (Ready, untainted, cpu/memory/pods allocatable; no nvidia.com/gpu) and
  renews its Lease in ``kube-node-lease`` so the node lifecycle controller keeps it Ready;
* watches Pods in all namespaces; binds unscheduled ones (``schedulerName`` default, no
  scheduling gates, ``nodeSelector`` matching the node's labels; no resource-fit check) via
  the ``pods/binding`` subresource;
* runs the first container (``spec.containers[0]``; sidecars/init containers are not run)
  as ``command + args`` ($(VAR) expanded) in a fresh temp dir, with the container's
  ``env``/``envFrom`` (literal values, Secret/ConfigMap refs read from the API, simple
  fieldRefs) on top of ``PATH``/``HOME``/``HOSTNAME``; output goes to a log file
  (:meth:`LocalNode.logs`);
* writes status through ``pods/status``: Running, then Succeeded/Failed with a terminated
  containerStatus (exitCode, reason Completed/Error); restarts in place for
  restartPolicy OnFailure/Always (1 s..10 s backoff, restartCount updated);
* enforces ``activeDeadlineSeconds`` (kill, phase Failed, reason DeadlineExceeded);
* on Pod deletion kills the process group (SIGTERM, then SIGKILL after the grace period),
  marks the Pod Failed and deletes it with grace 0, as a kubelet does.

What kube-apiserver v1.35.4 actually enforces (probed; see
specs/TEST-001-control-plane.md): nothing about the order. A ``pods/status`` PUT is
accepted on an *unbound* Pod, with any phase, with containerStatuses naming unknown
containers or lacking ``image``, and even from Succeeded back to Running. A Binding to a
*non-existent* Node is accepted too, but the KCM's PodGC deletes Pods bound to a missing
Node (~60 s observed), so the Node object must exist. The writer needs ``pods/binding``
create, ``pods/status`` update, ``nodes``/``nodes/status`` and ``leases`` write (the
admin identity has all). This class therefore keeps the real order itself (bind, then
Running, then one terminal status it never leaves), so the Job controller sees what a
scheduler and kubelet would produce.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from .rest import ApiException, Obj, Rest

__all__ = ["LocalNode", "expand_vars"]

log = logging.getLogger(__name__)

TERMINAL = ("Succeeded", "Failed")
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: str) -> float:
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def expand_vars(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined vars are substituted, ``$$`` escapes a
    ``$``, and unknown or malformed references are left as written."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("$(", i) and (end := value.find(")", i + 2)) != -1:
            name = value[i + 2 : end]
            out.append(env[name] if name in env else value[i : end + 1])
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


class _ConfigError(Exception):
    """The container's configuration cannot be resolved yet (kubelet's
    CreateContainerConfigError); retried until it can or the Pod goes away."""


class _UnsupportedError(Exception):
    """The Pod needs something this local node cannot do; the Pod is failed."""


@dataclass
class _Run:
    namespace: str
    name: str
    uid: str
    workdir: Path
    log_path: Path
    thread: threading.Thread | None = None
    process: subprocess.Popen[bytes] | None = None
    kill_reason: str | None = None  # "deleted", "stopped"; None + deadline passed = deadline
    deadline: float | None = None  # epoch seconds, from activeDeadlineSeconds
    start_time: str = ""  # status.startTime
    restarts: int = 0
    killed_code: int = 137  # exit code after an interrupting kill (143 = exited on SIGTERM)
    last_state: Obj = field(default_factory=dict)
    grace_seconds: float = 30.0
    wake: threading.Event = field(default_factory=threading.Event)


class LocalNode:
    """Binds and runs Pods locally. ``start()`` / ``stop()``; see the module docstring.

    ``api_client`` must be allowed to create Nodes and Leases, bind Pods, update
    ``pods/status``, delete Pods and read Secrets/ConfigMaps: use the admin identity.
    ``base_env`` is added to every process's environment (e.g. PYTHONPATH for tests).
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        name: str = "smartspec-local-node",
        *,
        base_env: Mapping[str, str] | None = None,
        work_root: Path | None = None,
        lease_seconds: int = 40,
        restart_backoff_max: float = 10.0,
    ) -> None:
        self.name = name
        self.rest = Rest(api_client)
        self.base_env = dict(base_env or {})
        self._own_work_root = work_root is None
        self.work_root = work_root or Path(tempfile.mkdtemp(prefix="smartspec-localnode-"))
        self.lease_seconds = lease_seconds
        self.restart_backoff_max = restart_backoff_max
        self._runs: dict[str, _Run] = {}
        self._handled: set[str] = set()  # uids bound / deleted / reported unschedulable
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": _go_arch(),
            "smartspec.test/local-node": "true",
        }

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Register the Node and start the watch and heartbeat threads."""
        self._register_node()
        self._renew_lease()
        for target, tname in ((self._watch_loop, "watch"), (self._heartbeat_loop, "heartbeat")):
            t = threading.Thread(target=target, name=f"localnode-{tname}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, delete_node: bool = True) -> None:
        """Kill all running Pods (reported Failed, reason Terminated), stop the threads."""
        self._stop.set()
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.kill_reason = run.kill_reason or "stopped"
            run.grace_seconds = min(run.grace_seconds, 2.0)
            run.wake.set()
        for run in runs:
            if run.thread is not None:
                run.thread.join(15)
        for t in self._threads:
            t.join(10)
        if delete_node:
            try:
                self.rest.request("DELETE", f"/api/v1/nodes/{self.name}", timeout=10)
            except Exception as exc:  # best effort; the cluster may be gone
                log.debug("deleting node %s failed: %s", self.name, exc)
        if self._own_work_root:
            shutil.rmtree(self.work_root, ignore_errors=True)

    def logs(self, namespace: str, name: str) -> str:
        """Output (stdout+stderr) of the most recent local run of that Pod."""
        with self._lock:
            runs = [r for r in self._runs.values() if r.namespace == namespace and r.name == name]
        if not runs:
            candidates = sorted(
                self.work_root.glob(f"{namespace}_{name}_*/container.log"),
                key=lambda p: p.stat().st_mtime,
            )
            if not candidates:
                raise KeyError(f"no local run of pod {namespace}/{name}")
            return candidates[-1].read_text(errors="replace")
        return runs[-1].log_path.read_text(errors="replace")

    # -- node and lease ------------------------------------------------------------------

    def _node_status(self) -> Obj:
        now = _now()
        mem_kib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
        resources = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{mem_kib}Ki",
            "pods": "110",
            "ephemeral-storage": "100Gi",
        }
        try:
            kubelet_version = str(self.rest.get("/version")["gitVersion"])
        except Exception:  # only cosmetic
            kubelet_version = "v0.0.0-localnode"

        def cond(ctype: str, status: str, reason: str, message: str) -> Obj:
            return {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "local node"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "local node"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "local node"),
                cond("Ready", "True", "KubeletReady", "smartspec test local node is ready"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.name},
            ],
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": "smartspec local node",
                "containerRuntimeVersion": "local-subprocess://0",
                "kubeletVersion": kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _go_arch(),
            },
        }

    def _register_node(self) -> None:
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": self.labels},
            "spec": {},
            "status": self._node_status(),
        }
        try:
            self.rest.post("/api/v1/nodes", body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        self._update_node_status()

    def _update_node_status(self) -> None:
        # Create may drop status; a kubelet likewise (re)writes it through nodes/status.
        for _ in range(5):
            node = self.rest.get(f"/api/v1/nodes/{self.name}")
            node["status"] = {**node.get("status", {}), **self._node_status()}
            try:
                self.rest.put(f"/api/v1/nodes/{self.name}/status", node)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise

    def _renew_lease(self) -> None:
        leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        spec = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": self.lease_seconds,
            "renewTime": _now_micro(),
        }
        try:
            lease = self.rest.get(f"{leases}/{self.name}")
            lease["spec"] = {**lease.get("spec", {}), **spec}
            self.rest.put(f"{leases}/{self.name}", lease)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.rest.post(
                leases,
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": "kube-node-lease"},
                    "spec": spec,
                },
            )

    def _heartbeat_loop(self) -> None:
        ticks = 0
        while not self._stop.wait(self.lease_seconds / 4):
            ticks += 1
            try:
                self._renew_lease()
                if ticks % 6 == 0:
                    self._update_node_status()
            except Exception as exc:  # keep beating; log for debugging
                log.warning("local node heartbeat failed: %s", exc)

    # -- pod watch -----------------------------------------------------------------------

    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                listing = self.rest.get("/api/v1/pods")
                for pod in listing["items"]:
                    self._on_pod(pod, deleted=False)
                rv = listing["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    # Short server-side timeout: stop() needs no way to abort a blocked read.
                    for event in self.rest.watch(
                        "/api/v1/pods",
                        resourceVersion=rv,
                        timeoutSeconds=5,
                        allowWatchBookmarks="true",
                    ):
                        if self._stop.is_set():
                            return
                        raw: Obj = event["object"]
                        rv = raw["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self._on_pod(raw, deleted=event["type"] == "DELETED")
            except Exception as exc:  # relist on 410 Gone or any hiccup
                if not self._stop.is_set():
                    log.info("local node pod watch restarting: %s", exc)
                    self._stop.wait(1)

    def _on_pod(self, pod: Obj, *, deleted: bool) -> None:
        meta, spec = pod["metadata"], pod.get("spec", {})
        uid, phase = meta["uid"], pod.get("status", {}).get("phase")
        with self._lock:
            if self._stop.is_set():
                return
            run = self._runs.get(uid)
            if deleted or meta.get("deletionTimestamp"):
                if run is not None:
                    if run.kill_reason is None:
                        run.kill_reason = "deleted"
                        grace = meta.get("deletionGracePeriodSeconds")
                        run.grace_seconds = float(30 if grace is None else grace)
                    run.wake.set()
                elif (
                    not deleted
                    and spec.get("nodeName") == self.name
                    and phase not in TERMINAL
                    and uid not in self._handled
                ):
                    # Bound to us but never started (or started by an earlier instance).
                    self._handled.add(uid)
                    self._spawn(self._delete_now, meta["namespace"], meta["name"], uid)
                return
            if not spec.get("nodeName"):
                if uid not in self._handled and phase in (None, "Pending"):
                    self._handled.add(uid)
                    self._spawn(self._schedule, pod)
            elif spec["nodeName"] == self.name and run is None and phase in (None, "Pending"):
                ns, name = meta["namespace"], meta["name"]
                workdir = self.work_root / f"{ns}_{name}_{uid[:8]}"
                run = _Run(ns, name, uid, workdir, workdir / "container.log")
                self._runs[uid] = run
                run.thread = self._spawn(self._run_pod, pod, run)

    def _spawn(self, target: Callable[..., None], *args: Any) -> threading.Thread:
        def guarded() -> None:
            try:
                target(*args)
            except Exception:  # a worker must never kill the node silently
                log.exception("local node worker %s failed", target.__name__)

        t = threading.Thread(target=guarded, name=f"localnode-{target.__name__}", daemon=True)
        t.start()
        return t

    # -- scheduling ------------------------------------------------------------------------

    def _schedule(self, pod: Obj) -> None:
        meta, spec = pod["metadata"], pod.get("spec", {})
        ns, name = meta["namespace"], meta["name"]
        if spec.get("schedulerName", "default-scheduler") != "default-scheduler":
            return
        if spec.get("schedulingGates"):
            with self._lock:
                self._handled.discard(meta["uid"])  # look again once the gates are removed
            return
        selector: dict[str, str] = spec.get("nodeSelector") or {}
        mismatch = {k: v for k, v in selector.items() if self.labels.get(k) != v}
        if mismatch:
            self._update_status(
                ns,
                name,
                meta["uid"],
                lambda st: _set_condition(
                    st,
                    "PodScheduled",
                    "False",
                    "Unschedulable",
                    f"0/1 nodes are available: local node does not match nodeSelector {mismatch}",
                ),
            )
            return
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.name},
        }
        try:
            self.rest.post(f"/api/v1/namespaces/{ns}/pods/{name}/binding", binding)
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone, or already bound
                raise

    # -- running ---------------------------------------------------------------------------

    def _run_pod(self, pod: Obj, run: _Run) -> None:
        spec = pod["spec"]
        container: Obj = spec["containers"][0]
        run.workdir.mkdir(parents=True, exist_ok=True)
        run.start_time = start_time = pod.get("status", {}).get("startTime") or _now()
        # Like the kubelet, count activeDeadlineSeconds from status.startTime.
        if spec.get("activeDeadlineSeconds") is not None:
            run.deadline = _parse_time(start_time) + float(spec["activeDeadlineSeconds"])
        policy = spec.get("restartPolicy", "Always")
        backoff = 1.0

        def pending(reason: str, message: str) -> Callable[[Obj], None]:
            def mutate(st: Obj) -> None:
                st["startTime"] = st.get("startTime") or start_time
                st["hostIP"], st["hostIPs"] = "127.0.0.1", [{"ip": "127.0.0.1"}]
                st["containerStatuses"] = [
                    _cstatus(
                        container,
                        {"waiting": {"reason": reason, "message": message}},
                        run.restarts,
                        run.last_state,
                    )
                ]

            return mutate

        while True:
            try:
                argv, env = self._command(pod, container, run.workdir)
            except _ConfigError as exc:
                self._update_status(
                    run.namespace,
                    run.name,
                    run.uid,
                    pending("CreateContainerConfigError", str(exc)),
                )
                if self._wait_interrupt(run, 2.0):
                    break
                continue
            except _UnsupportedError as exc:
                failed = {"terminated": _terminated(128, "StartError", str(exc), _now())}
                self._finish(
                    run,
                    container,
                    phase="Failed",
                    state=failed,
                    reason="LocalNodeUnsupported",
                    message=str(exc),
                )
                return
            started_at = _now()
            code, message = self._exec(run, container, argv, env)
            finished_at = _now()
            if code is None:  # interrupted before or during the run
                break
            state = {
                "terminated": _terminated(
                    code,
                    "Completed" if code == 0 else ("StartError" if message else "Error"),
                    message,
                    finished_at,
                    started_at,
                )
            }
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                phase = "Succeeded" if code == 0 else "Failed"
                msg = self._fallback_message(container, run, code) or message
                if msg:
                    state["terminated"]["message"] = msg
                self._finish(run, container, phase=phase, state=state)
                return
            # restartPolicy OnFailure/Always: restart in place, as the kubelet does.
            run.restarts += 1
            run.last_state = state
            self._update_status(
                run.namespace,
                run.name,
                run.uid,
                pending("CrashLoopBackOff", f"back-off {backoff:.0f}s restarting failed container"),
            )
            if self._wait_interrupt(run, backoff):
                break
            backoff = min(backoff * 2, self.restart_backoff_max)

        # Interrupted: deleted, node stopping, or deadline exceeded.
        killed = {"terminated": _terminated(run.killed_code, "Error", "", _now())}
        if run.kill_reason is None:  # deadline
            self._finish(
                run,
                container,
                phase="Failed",
                state=killed,
                reason="DeadlineExceeded",
                message=DEADLINE_MESSAGE,
            )
        elif run.kill_reason == "stopped":
            self._finish(
                run,
                container,
                phase="Failed",
                state=killed,
                reason="Terminated",
                message="Pod was terminated in response to local node shutdown.",
            )
        else:  # deleted: report terminal, then finish the graceful deletion (grace 0)
            self._finish(run, container, phase="Failed", state=killed)
            self._delete_now(run.namespace, run.name, run.uid)

    def _command(self, pod: Obj, container: Obj, workdir: Path) -> tuple[list[str], dict[str, str]]:
        """argv ($(VAR)-expanded command + args) and environment of the container."""
        env, declared = self._container_env(pod, container)
        mounts = self._materialize_volumes(pod, container, workdir / "volumes")
        # No mount namespace here: values the pod declares that point into a mount (the usual
        # way a program is told where its files are) are pointed at the materialised copy.
        # Only the pod's own: the host's PATH or HOME may lie under a mount path too (a
        # checkout under /tmp, where the sandbox mounts an emptyDir), and is not the pod's.
        for key in declared:
            value = env[key]
            for mount_path, local in mounts.items():
                if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                    env[key] = str(local) + value[len(mount_path.rstrip("/")) :]
                    break
        command = container.get("command") or []
        if not command:
            raise _UnsupportedError(
                "the local node needs an explicit container `command` "
                "(it cannot read the image's entrypoint)"
            )
        return [expand_vars(a, env) for a in [*command, *(container.get("args") or [])]], env

    def _exec(
        self, run: _Run, container: Obj, argv: list[str], env: dict[str, str]
    ) -> tuple[int | None, str]:
        """Run one container attempt; (exit code, start-error message), or (None, "") when
        interrupted by deletion/stop/deadline."""
        if self._interrupted(run):
            return None, ""
        with run.log_path.open("ab") as out:
            try:
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=run.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # own group: kill children too
            except OSError as exc:
                msg = f"failed to start container process {argv[0]!r}: {exc}"
                out.write(f"{msg}\n".encode())
                return 128, msg
        run.process = proc
        try:
            self._update_status(
                run.namespace,
                run.name,
                run.uid,
                lambda st: _running(st, container, _now(), proc.pid),
            )
        except Exception:  # keep supervising: an orphaned process would outlive the test
            log.exception(
                "local node: writing Running status of %s/%s failed", run.namespace, run.name
            )
        return self._supervise(run, proc), ""

    def _supervise(self, run: _Run, proc: subprocess.Popen[bytes]) -> int | None:
        while True:
            code = proc.poll()
            if code is not None:
                return _exit_code(code)
            if self._interrupted(run):
                grace = run.grace_seconds if run.kill_reason else 0.0
                run.killed_code = _exit_code(_kill_group(proc, grace))
                return None
            run.wake.wait(0.2)

    @staticmethod
    def _interrupted(run: _Run) -> bool:
        if run.kill_reason is not None:
            return True
        return run.deadline is not None and time.time() >= run.deadline

    def _wait_interrupt(self, run: _Run, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as the run is interrupted."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._interrupted(run):
                return True
            run.wake.wait(min(0.2, left))
        return self._interrupted(run)

    def _finish(
        self,
        run: _Run,
        container: Obj,
        *,
        phase: str,
        state: Obj,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        def mutate(st: Obj) -> None:
            st["phase"] = phase
            st["startTime"] = st.get("startTime") or run.start_time
            st["hostIP"], st["hostIPs"] = "127.0.0.1", [{"ip": "127.0.0.1"}]
            st["containerStatuses"] = [_cstatus(container, state, run.restarts, run.last_state)]
            for ctype in ("Ready", "ContainersReady"):
                _set_condition(
                    st,
                    ctype,
                    "False",
                    "PodCompleted" if phase == "Succeeded" else "PodFailed",
                    None,
                )
            if reason:
                st["reason"] = reason
            if message:
                st["message"] = message

        self._update_status(run.namespace, run.name, run.uid, mutate)

    def _fallback_message(self, container: Obj, run: _Run, code: int) -> str:
        """terminationMessagePolicy FallbackToLogsOnError: last log lines as the message."""
        if code == 0 or container.get("terminationMessagePolicy") != "FallbackToLogsOnError":
            return ""
        try:
            text = run.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-80:])[-2048:]

    def _delete_now(self, namespace: str, name: str, uid: str) -> None:
        try:
            self.rest.delete(
                f"/api/v1/namespaces/{namespace}/pods/{name}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": uid},
                },
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _materialize_volumes(self, pod: Obj, container: Obj, root: Path) -> dict[str, Path]:
        """emptyDir, Secret and ConfigMap volumes as local directories, by mount path.

        Secret and ConfigMap items are written as files with the volume's defaultMode. A
        projected volume (the API server adds one for the service-account token) stays empty:
        no token is handed to a local process. Other volume types fail the pod clearly.
        """
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes") or []}
        namespace = pod["metadata"]["namespace"]
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"])
            if volume is None:
                raise _UnsupportedError(f"volumeMount {mount['name']!r} names no volume")
            local = root / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            if "secret" in volume or "configMap" in volume:
                kind, source = (
                    ("secret", volume["secret"])
                    if "secret" in volume
                    else ("configmap", volume["configMap"])
                )
                name = source.get("secretName") or source.get("name")
                data = self._read_data(kind, namespace, name, source.get("optional", False)) or {}
                items = source.get("items") or [{"key": key, "path": key} for key in data]
                for item in items:
                    if item["key"] not in data:
                        raise _ConfigError(f"{kind} {name} has no key {item['key']!r}")
                    target = local / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[item["key"]])
                    target.chmod(source.get("defaultMode", 0o644) & 0o777)
            elif "emptyDir" not in volume and "projected" not in volume:
                raise _UnsupportedError(
                    f"volume {mount['name']!r}: the local node supports only emptyDir, secret, "
                    "configMap and (empty) projected volumes"
                )
            mounts[mount["mountPath"]] = local
        return mounts

    # -- environment -----------------------------------------------------------------------

    def _container_env(self, pod: Obj, container: Obj) -> tuple[dict[str, str], set[str]]:
        """The environment, and the names the pod itself declares (env and envFrom)."""
        meta = pod["metadata"]
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOSTNAME": meta["name"],
            **self.base_env,
        }
        # HOME: the pod's own scratch dir, so tools that write ~/.cache stay contained.
        env["HOME"] = str(self.work_root / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}")
        ns = meta["namespace"]
        declared: set[str] = set()
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = self._read_data("configmap", ns, ref["name"], ref.get("optional", False))
            else:
                ref = source["secretRef"]
                data = self._read_data("secret", ns, ref["name"], ref.get("optional", False))
            env.update({prefix + k: v for k, v in (data or {}).items()})
            declared.update(prefix + k for k in data or {})
        for var in container.get("env") or []:
            if "valueFrom" not in var:
                env[var["name"]] = expand_vars(var.get("value", ""), env)
                declared.add(var["name"])
                continue
            value = self._value_from(pod, var["name"], var["valueFrom"])
            if value is not None:
                env[var["name"]] = value
                declared.add(var["name"])
        return env, declared

    def _value_from(self, pod: Obj, var: str, source: Obj) -> str | None:
        ns = pod["metadata"]["namespace"]
        for kind, key in (("secret", "secretKeyRef"), ("configmap", "configMapKeyRef")):
            if key in source:
                ref = source[key]
                optional = bool(ref.get("optional", False))
                data = self._read_data(kind, ns, ref["name"], optional)
                if data is None or ref["key"] not in data:
                    if optional:
                        return None
                    raise _ConfigError(
                        f"couldn't find key {ref['key']} in {kind} {ns}/{ref['name']} (env {var})"
                    )
                return data[ref["key"]]
        if "fieldRef" in source:
            return _field_ref(pod, source["fieldRef"]["fieldPath"], var)
        raise _UnsupportedError(
            f"env {var}: valueFrom {sorted(source)} is not supported by the local node"
        )

    def _read_data(self, kind: str, ns: str, name: str, optional: bool) -> dict[str, str] | None:
        try:
            if kind == "secret":
                obj = self.rest.get(f"/api/v1/namespaces/{ns}/secrets/{name}")
                return {
                    k: base64.b64decode(v).decode(errors="replace")
                    for k, v in (obj.get("data") or {}).items()
                }
            obj = self.rest.get(f"/api/v1/namespaces/{ns}/configmaps/{name}")
            return dict(obj.get("data") or {})
        except ApiException as exc:
            if exc.status == 404:
                if optional:
                    return None
                raise _ConfigError(f"{kind} {ns}/{name} not found") from exc
            raise

    # -- status plumbing -------------------------------------------------------------------

    def _update_status(
        self, namespace: str, name: str, uid: str, mutate: Callable[[Obj], None]
    ) -> bool:
        """Read-modify-write of pods/status (PUT with resourceVersion), retrying conflicts.
        Returns False when the Pod is gone or was replaced by one with another uid."""
        for _ in range(20):
            try:
                pod = self.rest.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            if pod["metadata"]["uid"] != uid:
                return False
            status = pod.setdefault("status", {})
            if status.get("phase") in TERMINAL:
                return False  # terminal phases are final; nothing more to report
            mutate(status)
            try:
                self.rest.put(f"/api/v1/namespaces/{namespace}/pods/{name}/status", pod)
                return True
            except ApiException as exc:
                if exc.status == 409:
                    continue
                if exc.status == 404:
                    return False
                raise
        raise RuntimeError(f"pod {namespace}/{name}: status update kept conflicting")


# -- helpers -----------------------------------------------------------------------------


def _go_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


def _exit_code(returncode: int) -> int:
    """Popen's -N (killed by signal N) as container runtimes report it: 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM the process group, SIGKILL after ``grace`` s; returns Popen's returncode."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def _terminated(
    code: int, reason: str, message: str, finished_at: str, started_at: str | None = None
) -> Obj:
    term: Obj = {
        "exitCode": code,
        "reason": reason,
        "finishedAt": finished_at,
        "startedAt": started_at or finished_at,
    }
    if message:
        term["message"] = message
    return term


def _cstatus(
    container: Obj, state: Obj, restarts: int, last_state: Obj, pid: int | None = None
) -> Obj:
    running = "running" in state
    cs: Obj = {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "ready": running,
        "started": running,
        "restartCount": restarts,
        "state": state,
        "lastState": last_state or {},
    }
    if pid is not None:
        cs["containerID"] = f"local://{pid}"
    return cs


def _set_condition(
    status: Obj, ctype: str, value: str, reason: str | None, message: str | None
) -> None:
    conds: list[Obj] = status.setdefault("conditions", [])
    for c in conds:
        if c["type"] == ctype:
            if c.get("status") != value:
                c["lastTransitionTime"] = _now()
            c["status"] = value
            break
    else:
        c = {"type": ctype, "status": value, "lastTransitionTime": _now()}
        conds.append(c)
    for key, val in (("reason", reason), ("message", message)):
        if val:
            c[key] = val
        else:
            c.pop(key, None)


def _running(status: Obj, container: Obj, started_at: str, pid: int) -> None:
    restarts, last = 0, {}  # type: tuple[int, Obj]
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") == container["name"]:
            restarts, last = cs.get("restartCount", 0), cs.get("lastState") or {}
    status["phase"] = "Running"
    status["startTime"] = status.get("startTime") or started_at
    status["hostIP"], status["hostIPs"] = "127.0.0.1", [{"ip": "127.0.0.1"}]
    status["containerStatuses"] = [
        _cstatus(container, {"running": {"startedAt": started_at}}, restarts, last, pid)
    ]
    for ctype in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"):
        _set_condition(status, ctype, "True", None, None)


def _field_ref(pod: Obj, path: str, var: str) -> str:
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
        "status.podIP": status.get("podIP", ""),
        "status.podIPs": status.get("podIP", ""),
    }
    if path in simple:
        return str(simple[path] or "")
    for prefix, mapping in (
        ("metadata.labels", meta.get("labels") or {}),
        ("metadata.annotations", meta.get("annotations") or {}),
    ):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str(mapping.get(path[len(prefix) + 2 : -2], ""))
    raise _UnsupportedError(f"env {var}: fieldRef {path!r} is not supported by the local node")

"""Which watch events make a run reconcile (specs/CORE-004-generation-runs.md, "Reconciler")."""

from __future__ import annotations

from typing import Any, cast

from smartspec.reconcilers.runs import RunContext, RunReconciler


def reconciler() -> RunReconciler:
    none = cast("Any", None)
    context = RunContext(
        kube=none,
        events=none,
        store=none,
        sandbox=none,
        token_keys=(),
        gateway_base_url="http://gateway",
        url_ttl_seconds=60,
    )
    return RunReconciler(context)


def run(version: str, phase: str | None = "Generating") -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team-a", "name": "r", "uid": "u", "resourceVersion": version},
        "status": {"phase": phase} if phase else {},
    }


def test_a_change_queues_the_run_once_however_often_it_is_named() -> None:
    runs = reconciler()
    runs.on_run_event("ADDED", run("1", None))
    runs.on_run_event("MODIFIED", run("2"))
    assert len(runs.queue) == 1


def test_the_echo_of_a_settled_write_is_skipped_and_anything_else_is_not() -> None:
    runs = reconciler()
    runs._echoes[("team-a", "r")] = {"5", "6"}  # what a settled reconcile wrote
    runs.on_run_event("MODIFIED", run("5"))
    assert len(runs.queue) == 0
    runs.on_run_event("MODIFIED", run("6"))
    assert len(runs.queue) == 0
    runs.on_run_event("MODIFIED", run("6"))  # seen once already: no longer an echo
    assert len(runs.queue) == 1


def test_a_change_by_someone_else_drops_the_echoes_so_nothing_is_missed() -> None:
    runs = reconciler()
    runs._echoes[("team-a", "r")] = {"5"}
    runs.on_run_event("MODIFIED", run("4"))  # a user's edit that came first
    runs.on_run_event("MODIFIED", run("5"))
    assert len(runs.queue) == 1
    assert runs._echoes == {}


def test_a_finished_run_costs_nothing_more() -> None:
    runs = reconciler()
    runs.on_run_event("MODIFIED", run("9", "Succeeded"))
    assert len(runs.queue) == 0


def job(**status: Any) -> dict[str, Any]:
    owner = {"kind": "GenerationRun", "name": "r"}
    metadata = {"namespace": "team-a", "name": "r-gen-1", "uid": "j", "ownerReferences": [owner]}
    return {"metadata": metadata, "spec": {}, "status": status}


def pod(phase: str, ip: str = "") -> dict[str, Any]:
    labels = {"smartspec.dev/run-uid": "u", "smartspec.dev/run": "r"}
    metadata = {"namespace": "team-a", "name": "r-gen-1-x", "uid": "p", "labels": labels}
    return {"metadata": metadata, "status": {"phase": phase, "podIP": ip}}


def test_a_sandbox_change_wakes_its_run_only_when_the_run_decides_on_it() -> None:
    runs = reconciler()
    runs.on_sandbox_event("Job", "ADDED", job())  # the Job this run just created
    runs.on_sandbox_event("Job", "MODIFIED", job(active=1))
    runs.on_sandbox_event("Pod", "ADDED", pod("Pending"))
    assert len(runs.queue) == 0
    runs.on_sandbox_event("Pod", "MODIFIED", pod("Running", "10.0.0.7"))
    assert len(runs.queue) == 1, "a running pod's IP is a local model's endpoint"


def test_a_finished_or_deleted_job_wakes_its_run() -> None:
    for event, body in [
        ("MODIFIED", job(conditions=[{"type": "Complete", "status": "True"}])),
        ("MODIFIED", job(conditions=[{"type": "Failed", "status": "True"}])),
        ("DELETED", job(active=1)),
    ]:
        runs = reconciler()
        runs.on_sandbox_event("Job", "ADDED", job())
        runs.on_sandbox_event("Job", event, body)
        assert len(runs.queue) == 1, event
        assert runs._sandboxes == {}, "a finished or deleted Job is forgotten"


class RecordingKube:
    """The two calls a refused run makes: read it, write its status."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.patches: list[tuple[str, dict[str, Any]]] = []

    async def get(self, path: str) -> dict[str, Any]:
        return self.body

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.patches.append((path, body))
        return {}


class RecordingEvents:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str]] = []

    async def record(self, involved: Any, record: Any, *, transition: str) -> bool:
        self.posted.append((record.type, record.reason, record.message))
        return True


async def test_a_run_the_types_refuse_ends_failed_naming_the_field_not_silently_stuck() -> None:
    # Admitted by an older schema, say: the operator's types refuse a string count.
    body = {
        "apiVersion": "smartspec.dev/v1alpha1",
        "kind": "GenerationRun",
        "metadata": {"namespace": "team-a", "name": "r", "uid": "u", "generation": 1},
        "spec": {"specRef": {"name": "s"}, "generator": {"backend": "builtin"}, "maxAttempts": "3"},
    }
    kube, events = RecordingKube(body), RecordingEvents()
    runs = reconciler()
    runs.context = RunContext(
        kube=cast("Any", kube),
        events=cast("Any", events),
        store=cast("Any", None),
        sandbox=cast("Any", None),
        token_keys=(),
        gateway_base_url="http://gateway",
        url_ttl_seconds=60,
    )
    assert await runs.reconcile(("team-a", "r")) is None
    [(path, patch)] = kube.patches
    assert path.endswith("/namespaces/team-a/generationruns/r/status")
    assert patch["status"]["phase"] == "Failed"
    [condition] = patch["status"]["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Succeeded",
        "False",
        "Invalid",
    )
    assert condition["message"].startswith("spec.maxAttempts: ")
    assert events.posted == [("Warning", "Invalid", condition["message"])]

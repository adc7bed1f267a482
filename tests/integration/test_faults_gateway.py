"""The gateway's part of the fault suite: replicas killed mid-call and mid-stream, providers
that rate-limit, fail, stall, answer garbage or cut their streams, and malformed requests
at volume.

Contract: specs/CORE-003-gateway-and-budgets.md, sections "Budget accounting", "Streaming",
"Routing", "Errors" and "Ledger". Everything is real (the API server, S3, `smartspec gateway`
processes) except the model: the local OpenAI-compatible stub, whose answers are canned.
These tests check the plumbing (who is charged what, what the client is told, what the
ledger says), never model quality.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from fuzz.gateway_requests import Case, cases
from smartspec.gateway.chat_request import prompt_token_bound
from smartspec.logic.ledger import LedgerEntry
from smartspec.logic.pricing import cost_credits
from smartspec.logic.run_tokens import RunTokenClaims, mint_run_token
from smartspec.logic.spending import SettledBy
from stubs.openai_stub import ScriptItem, StubServer, default_reply
from testcluster.gateway_calls import (
    STUB_PRICE,
    budget_status,
    charge,
    chat,
    create_budget,
    create_run,
    ledger_entries,
    settled,
    token_for,
    verify_ledger,
)
from testcluster.harness import TEST_TOKEN_KEY, GatewayProcess, wait_for, write_gateway_config
from testcluster.plugin import Cluster
from testcluster.rest import Rest
from testcluster.s3 import S3Endpoint

pytestmark = [pytest.mark.integration, pytest.mark.faults]

StartGateway = Callable[..., GatewayProcess]
PROMPT = "Write a to-do API."
MAX_TOKENS = 64
LEASE_SECONDS = 3
"""A short lease, so that a dead replica's lease lapses within the test."""


def chat_body(content: str = PROMPT, **extra: Any) -> dict[str, Any]:
    return {
        "model": "stub-model",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": MAX_TOKENS,
        **extra,
    }


def worst_case(body: dict[str, Any]) -> int:
    """The credits the gateway reserves for a call (the prompt's bound, max_tokens)."""
    return cost_credits(STUB_PRICE, prompt_token_bound(body), body["max_tokens"])


@dataclass
class BudgetWatch:
    """Polls the budget in a thread; every sample is checked: spent + reserved <= limit."""

    rest: Rest
    namespace: str
    limit: int
    samples: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> BudgetWatch:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            status = budget_status(self.rest, self.namespace)
            self.samples += 1
            if status.get("spentCredits", 0) + status.get("reservedCredits", 0) > self.limit:
                self.violations.append(status)
            self._stop.wait(0.05)


@dataclass
class InFlight:
    """A call made in a thread: the events (or answer) that arrived, and how it failed."""

    events: list[str] = field(default_factory=list)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def call_in_thread(gateway: GatewayProcess, token: str, body: dict[str, Any]) -> InFlight:
    """POST `body` from a thread; a streamed answer's `data:` lines are kept as they arrive."""
    flight = InFlight()

    def call() -> None:
        try:
            with httpx.stream(
                "POST",
                f"{gateway.url}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            ) as response:
                for line in response.iter_lines():
                    if line:
                        flight.events.append(line)
        except BaseException as error:  # the test asserts on what it was
            flight.error = error
        finally:
            flight.done.set()

    threading.Thread(target=call, daemon=True).start()
    return flight


def reservations_of(rest: Rest, namespace: str, holder: str) -> list[dict[str, Any]]:
    reservations = budget_status(rest, namespace).get("reservations") or []
    return [r for r in reservations if r["holder"] == holder]


# ---------------------------------------------------------------- item 4: a replica killed


def test_a_replica_killed_mid_call_and_mid_stream_loses_no_credit(
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    stub: StubServer,
    s3: S3Endpoint,
) -> None:
    """Replica A is SIGKILLed with a plain call and a stream in flight; replica B shares the
    budget. Invariants:
    1. the plain call's client gets a connection error, the stream's a broken stream (some
       content, then the connection ends without `[DONE]`);
    2. `spentCredits + reservedCredits <= limitCredits` at every poll of the budget, from
       before the kill until every lease is back;
    3. A's lease at its death covered both calls in flight, and is charged, not lost: CORE-003
       "Lapsed leases" charges a lease not renewed in time as spent by the next writer (a
       `lease-expired` entry of exactly its credits), because its holder may have died after
       the provider billed it;
    4. B answers throughout, and every call through B is charged exactly its usage;
    5. the ledger verifies, and spentCredits = what was charged before the kill + A's lease
       + B's calls after it.
    """
    limit = 1_000_000
    create_budget(cluster, tenant, limit)
    run = create_run(cluster, tenant)
    token = token_for(run)
    short = {"SMARTSPEC_GATEWAY_LEASE_SECONDS": str(LEASE_SECONDS)}
    doomed, survivor = start_gateway(**short), start_gateway(**short)
    admin = cluster.rest("admin")

    with BudgetWatch(admin, tenant, limit) as watch:
        before = [chat(doomed, token, "warm up A"), chat(survivor, token, "warm up B")]
        assert [status for status, _, _ in before] == [200, 200], before
        charged_before = sum(charge(body) for _, body, _ in before)
        wait_for(
            lambda: budget_status(admin, tenant).get("spentCredits") == charged_before,
            "the warm-up calls to be charged",
        )

        stub.stall_seconds = 10  # the plain call: in flight until A dies
        stub.script.append("stall")
        plain_body = chat_body("in flight when A dies")
        plain = call_in_thread(doomed, token, plain_body)
        wait_for(lambda: len(stub.requests) == 3, "the plain call to reach the provider")
        stub.reply_fn = lambda body: "abcd" * 200  # 200 chunks, 0.2 s apart
        stub.chunk_delay_seconds = 0.2
        stream_body = chat_body("streaming when A dies", max_tokens=256, stream=True)
        streamed = call_in_thread(doomed, token, stream_body)
        wait_for(lambda: len(streamed.events) >= 4, "the stream to deliver content")
        in_flight = worst_case(plain_body) + worst_case(stream_body)

        assert doomed.stop(signal.SIGKILL) == -signal.SIGKILL
        killed_at = time.monotonic()
        at_death = budget_status(admin, tenant)
        stub.chunk_delay_seconds = 0
        stub.reply_fn = default_reply
        assert plain.done.wait(30)
        assert streamed.done.wait(30)

        assert isinstance(plain.error, httpx.TransportError), plain.error
        assert plain.events == [], "the plain call got no answer"
        assert isinstance(streamed.error, httpx.TransportError), streamed.error
        assert any('"content":"abcd"' in event for event in streamed.events)
        assert "data: [DONE]" not in streamed.events, "the stream did not end as if whole"
        record = stub.streams[0]
        wait_for(lambda: record.ended != "streaming", "the provider to see the stream end")
        assert record.ended == "client-gone", "the provider saw the request cancelled"

        assert at_death["spentCredits"] == charged_before, "nothing settled in flight"
        (lease,) = [r["credits"] for r in at_death["reservations"] if r["holder"] == "gw-0"]
        assert lease >= in_flight, "A's lease covered its calls in flight"

        # B answers while A's lease is still live, and after; its first full write after the
        # lease lapses charges it.
        after: list[dict[str, Any]] = []

        def lapsed() -> bool:
            status, body, _ = chat(survivor, token, f"after the kill {len(after)}")
            assert status == 200, body
            after.append(body)
            return reservations_of(admin, tenant, "gw-0") == []

        wait_for(lapsed, "B to charge A's lapsed lease", timeout=60, interval=0.25)
        recovered_seconds = time.monotonic() - killed_at
        for index in range(3):
            status, body, _ = chat(survivor, token, f"once recovered {index}")
            assert status == 200, body
            after.append(body)
        final = settled(admin, tenant)

    assert watch.violations == [], f"spent + reserved over the limit: {watch.violations[:3]}"
    assert watch.samples >= 20, f"only {watch.samples} polls of the budget"
    entries = ledger_entries(s3, admin, tenant)
    expired = [(e.holder, e.credits) for e in entries if e.kind == "lease-expired"]
    assert expired == [("gw-0", lease)], "A's lease was charged once, whole"
    charged_after = sum(charge(body) for body in after)
    assert final["spentCredits"] == charged_before + lease + charged_after
    b_settles = [e for e in entries if e.kind == "settle" and e.holder == "gw-1"]
    assert sorted(e.credits for e in b_settles) == sorted(
        [charge(before[1][1]), *(charge(body) for body in after)]
    ), "every call through B is charged exactly its usage"
    assert "ledger OK" in verify_ledger(cluster, tenant, survivor)
    print(
        f"\nkill: lease of {lease} credits ({in_flight} in flight) charged by B "
        f"{recovered_seconds:.1f} s after the kill ({LEASE_SECONDS} s lease); "
        f"{len(after)} calls through B, {charged_after} credits; {watch.samples} polls"
    )


# ---------------------------------------------------------------- item 5: provider faults

Charged = Literal["nothing", "usage", "reservation", "estimate"]
PRIMARY = ("stub-model",) * 2  # a try and its retry (numRetries: 1)
BOTH = (*PRIMARY, "stub-backup")


@dataclass(frozen=True)
class Fault:
    """A provider fault, and what the client, the budget and the ledger must show."""

    script: tuple[ScriptItem, ...] = ()
    fail_models: tuple[tuple[str, int], ...] = ()
    fallback: bool = True
    timeout_seconds: float = 20
    stream: bool = False
    calls: int = 1
    status: int = 200
    code: str | None = None
    """The error code owed: the JSON body's, or a stream's error event's."""
    asked: tuple[str, ...] = ("stub-model",)
    """The models the provider is asked for, in order, per call."""
    charged: Charged = "usage"


FAULTS: dict[str, Fault] = {
    "429 storm, fallback": Fault(fail_models=(("stub-model", 429),), calls=4, asked=BOTH),
    "429 storm, no fallback": Fault(
        script=(429,) * 8,
        fallback=False,
        calls=4,
        status=429,
        code="rate_limited",
        asked=PRIMARY,
        charged="nothing",
    ),
    "429 on every route": Fault(
        fail_models=(("stub-model", 429), ("stub-backup", 429)),
        status=429,
        code="rate_limited",
        asked=(*BOTH, "stub-backup"),
        charged="nothing",
    ),
    "5xx, fallback": Fault(fail_models=(("stub-model", 500),), asked=BOTH),
    "5xx on every route": Fault(
        fail_models=(("stub-model", 500), ("stub-backup", 503)),
        status=502,
        code="provider_error",
        asked=(*BOTH, "stub-backup"),
        charged="nothing",
    ),
    "timeout, fallback": Fault(script=("stall", "stall"), timeout_seconds=1, asked=BOTH),
    "timeout, no fallback": Fault(
        script=("stall", "stall"),
        fallback=False,
        timeout_seconds=1,
        status=504,
        code="timeout",
        asked=PRIMARY,
        charged="nothing",
    ),
    "malformed answer, fallback": Fault(script=("not-json", "not-json"), asked=BOTH),
    "malformed answer, no fallback": Fault(
        script=("not-json", "not-json"),
        fallback=False,
        status=502,
        code="provider_error",
        asked=PRIMARY,
        charged="nothing",
    ),
    "answer without usage": Fault(script=("no-usage",), charged="reservation"),
    "stream, 5xx before the first byte, fallback": Fault(
        fail_models=(("stub-model", 500),), stream=True, asked=BOTH
    ),
    "stream, 429 on every route": Fault(
        fail_models=(("stub-model", 429), ("stub-backup", 429)),
        stream=True,
        status=429,
        code="rate_limited",
        asked=(*BOTH, "stub-backup"),
        charged="nothing",
    ),
    "stream cut mid-body": Fault(
        script=("stream-cut",), stream=True, code="stream_broken", charged="estimate"
    ),
    "stream without usage": Fault(script=("no-usage",), stream=True, charged="estimate"),
}
SETTLED_BY: dict[str, SettledBy] = {
    "usage": SettledBy.USAGE,
    "reservation": SettledBy.RESERVATION,
}


def stream_call(gateway: GatewayProcess, token: str) -> tuple[int, list[Any]]:
    """A streamed call asking for usage: (200, its events as JSON, "[DONE]" as text), or
    (status, [the JSON error]) when it was answered before streaming."""
    body = chat_body(stream=True, stream_options={"include_usage": True})
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{gateway.url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as response:
        if response.status_code != 200:
            return response.status_code, [json.loads(response.read())]
        events: list[Any] = []
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
        return 200, events


def stream_charge(events: list[Any], charged: Charged) -> int:
    """What a stream that delivered these events must cost: its usage, or CORE-003's
    conservative count (the prompt's bound, and max(bytes, chunks) of generated text)."""
    if charged == "usage":
        (usage,) = [e["usage"] for e in events if isinstance(e, dict) and e.get("usage")]
        return cost_credits(STUB_PRICE, usage["prompt_tokens"], usage["completion_tokens"])
    texts = [
        choice["delta"].get("content") or ""
        for event in events
        if isinstance(event, dict)
        for choice in event.get("choices", [])
    ]
    generated = [text for text in texts if text]
    completion = min(MAX_TOKENS, max(sum(len(t.encode()) for t in generated), len(generated)))
    return cost_credits(STUB_PRICE, prompt_token_bound(chat_body()), completion)


@pytest.mark.parametrize("transport", ["litellm", "openai-compatible"])
@pytest.mark.parametrize("label", list(FAULTS))
def test_provider_faults_fall_back_release_and_charge_what_they_owe(
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    stub: StubServer,
    s3: S3Endpoint,
    tmp_path: Path,
    label: str,
    transport: str,
) -> None:
    """One provider fault per case, on both transports. Invariants:
    1. the provider is asked for the models the configuration says, in order: the fallback
       is used where one is configured (the stub records each request's model);
    2. the client gets the status and error `code` of CORE-003's Errors table (a stream that
       broke after it started: an error event with that code and no `[DONE]`);
    3. no reservation leaks: every lease comes back (reservedCredits 0);
    4. the charge is right: 0 for a failure before any answer (a `release` entry of the
       whole hold, no `settle`), exact usage when the answer carried it, the reservation for
       an answer without usage, the conservative count for a stream without usage or cut;
    5. the ledger verifies.
    """
    fault = FAULTS[label]
    create_budget(cluster, tenant, 1_000_000)
    run = create_run(cluster, tenant)
    config = write_gateway_config(
        tmp_path / "faults.yaml",
        stub.url,
        transport=transport,
        fallback=fault.fallback,
        timeout_seconds=fault.timeout_seconds,
    )
    gateway = start_gateway(SMARTSPEC_GATEWAY_CONFIG=str(config))
    stub.stall_seconds = 3 * fault.timeout_seconds
    stub.script.extend(fault.script)
    stub.fail_models.update(dict(fault.fail_models))
    token = token_for(run)

    expected = 0
    for _ in range(fault.calls):
        status, error, owed = faulty_call(gateway, token, fault)
        assert status == fault.status, error
        if fault.code is None:
            assert error is None, error
        else:
            assert error is not None, "the client is told"
            assert (error["error"]["code"], error["error"]["type"]) == (
                fault.code,
                "upstream_error",
            ), error
        expected += owed

    assert [r["model"] for r in stub.requests] == list(fault.asked) * fault.calls
    budget = settled(cluster.rest("admin"), tenant)
    assert budget.get("reservedCredits", 0) == 0
    assert budget.get("spentCredits", 0) == expected
    entries = ledger_entries(s3, cluster.rest("admin"), tenant)
    reserves = [e for e in entries if e.kind == "reserve"]
    assert len(reserves) == fault.calls
    if fault.charged == "nothing":
        releases = [e for e in entries if e.kind == "release"]
        assert sorted(e.credits for e in releases) == sorted(e.credits for e in reserves)
        assert [e for e in entries if e.kind == "settle"] == []
        assert budget.get("spentCredits", 0) == 0
    else:
        settles = [e for e in entries if e.kind == "settle"]
        assert sum(e.credits for e in settles) == expected
        assert {e.settled_by for e in settles} == {settled_by(fault)}
        assert [e for e in entries if e.kind == "release"] == []
    assert "ledger OK" in verify_ledger(cluster, tenant, gateway)


def faulty_call(
    gateway: GatewayProcess, token: str, fault: Fault
) -> tuple[int, dict[str, Any] | None, int]:
    """One call as the case makes it: the status, the error the client was given (the JSON
    body, or the event that ended a broken stream), and the credits it must cost."""
    if not fault.stream:
        status, body, _ = chat(gateway, token)
        if status != 200:
            return status, body, 0
        if fault.charged == "reservation":
            return status, None, worst_case(chat_body())
        return status, None, charge(body)
    status, events = stream_call(gateway, token)
    if status != 200:
        return status, events[0], 0
    owed = stream_charge(events, fault.charged)
    if events[-1] == "[DONE]":
        return status, None, owed
    return status, events[-1], owed  # no [DONE]: the stream did not end as if whole


def settled_by(fault: Fault) -> SettledBy:
    if fault.charged != "estimate":
        return SETTLED_BY[fault.charged]
    if fault.code == "stream_broken":
        return SettledBy.ESTIMATE_UPSTREAM_BROKE
    return SettledBy.ESTIMATE_NO_USAGE


# ---------------------------------------------------------------- item 6: malformed requests

FUZZ_CASES = 600
SEED = int(os.environ.get("SMARTSPEC_FUZZ_SEED", str(random.SystemRandom().randrange(2**32))))


def mint(run: dict[str, Any], kind: str, good: str) -> str:
    """The run token a case asks for."""
    if kind == "valid":
        return good
    if kind == "expired":
        return token_for(run, ttl=-60)
    if kind == "bad_signature":
        return token_for(run, key=b"not-the-gateway-key-" * 3)
    if kind == "other_namespace":
        return token_for(run, namespace="t-nowhere-0000")
    claims = RunTokenClaims(
        namespace=run["metadata"]["namespace"],
        run="no-such-run",
        run_uid="00000000-0000-0000-0000-000000000000",
        attempt=1,
        budget="default",
        spec_revision=1,
        expires_at=int(time.time()) + 3600,
    )
    return mint_run_token(claims, TEST_TOKEN_KEY)


def send(client: httpx.Client, url: str, case: Case, tokens: dict[str, str]) -> httpx.Response:
    headers: dict[bytes, bytes] = {}
    if case.authorization is not None:
        value = case.authorization.replace("{token}", tokens[case.token])
        headers[b"Authorization"] = value.encode()
    if case.content_type is not None:
        headers[b"Content-Type"] = case.content_type.encode()
    content: bytes | Any = case.content
    if case.chunked:
        content = iter([case.content[i : i + 65_536] for i in range(0, len(case.content), 65_536)])
    return client.post(url, content=content, headers=headers)


def problem_with(case: Case, response: httpx.Response) -> str | None:
    """How an answer to a malformed request falls short of what the case is owed, if it does."""
    try:
        body = response.json()
    except ValueError:
        return f"{case}: {response.status_code}, not JSON: {response.text[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if not (
        isinstance(error, dict)
        and isinstance(error.get("message"), str)
        and error["message"]
        and isinstance(error.get("type"), str)
        and isinstance(error.get("code"), str)
    ):
        return f"{case}: {response.status_code}, not the OpenAI error shape: {body!r:.300}"
    got = (response.status_code, error["code"], error.get("param"))
    owed = (case.status, case.code, case.param)
    if got != owed:
        return f"{case}: got {got}, owed {owed}: {error['message'][:200]}"
    return None


def test_malformed_requests_at_volume_get_clear_errors_and_cost_nothing(
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    stub: StubServer,
    s3: S3Endpoint,
) -> None:
    """600 seeded malformed requests (tests/fuzz/gateway_requests.py; the seed is printed,
    SMARTSPEC_FUZZ_SEED replays it). Invariants:
    1. no answer is a 5xx: each is the status of CORE-003's Errors table the case is owed,
       with an OpenAI-shaped error body whose `code` is the one owed and whose `param`
       names the field at fault (token and header problems: the code says which);
    2. the gateway process is still running afterwards and its log has no traceback and no
       unhandled error;
    3. nothing is charged and nothing reaches the provider: a valid call after the batch is
       the only new request the stub sees, and the only new ledger entries are its own
       (reserve, settle), so spentCredits moved by exactly its charge.
    """
    print(f"\nfuzz seed: {SEED} (SMARTSPEC_FUZZ_SEED={SEED} replays these cases)")
    create_budget(cluster, tenant, 1_000_000)
    run = create_run(cluster, tenant)
    gateway = start_gateway()
    good = token_for(run)
    admin = cluster.rest("admin")

    status, body, _ = chat(gateway, good, "before the batch")
    assert status == 200, body
    spent_before = settled(admin, tenant)["spentCredits"]
    ledger_before = ledger_entries(s3, admin, tenant)
    requests_before = len(stub.requests)

    tokens = {
        kind: mint(run, kind, good)
        for kind in ("valid", "expired", "bad_signature", "other_namespace", "unknown_run")
    }
    url = f"{gateway.url}/v1/chat/completions"
    problems: list[tuple[int, str]] = []
    answered: Counter[int] = Counter()
    batch = cases(FUZZ_CASES, SEED)
    started = time.monotonic()
    with httpx.Client(timeout=60) as client:
        for case in batch:
            response = send(client, url, case, tokens)
            answered[response.status_code] += 1
            problem = problem_with(case, response)
            if problem is not None:
                problems.append((response.status_code, problem))
    elapsed = time.monotonic() - started
    print(f"{len(batch)} requests in {elapsed:.1f} s: {dict(sorted(answered.items()))}")
    print(dict(sorted(Counter(case.kind for case in batch).items())))

    server_errors = [problem for status, problem in problems if status >= 500]
    assert server_errors == [], "\n".join(server_errors[:30])
    shown = "\n".join(problem for _, problem in problems[:30])
    assert problems == [], f"{len(problems)} answers not as owed:\n{shown}"
    assert len(stub.requests) == requests_before, "a malformed request reached the provider"
    assert gateway.running
    log = gateway.log()
    assert "Traceback" not in log
    assert not [r for r in gateway.log_records() if r.get("level") in {"error", "critical"}]

    # A valid call after the batch: its settlement is written after anything the batch could
    # have left to write, so a charge or an entry from the batch would show by then.
    status, body, _ = chat(gateway, good, "after the batch")
    assert status == 200, body
    assert len(stub.requests) == requests_before + 1
    assert settled(admin, tenant)["spentCredits"] == spent_before + charge(body)
    new = new_entries(ledger_before, ledger_entries(s3, admin, tenant))
    assert [(e.kind, e.call_id) for e in new] == [
        ("reserve", new[0].call_id),
        ("settle", new[0].call_id),
    ], [(e.kind, e.detail) for e in new]
    assert "ledger OK" in verify_ledger(cluster, tenant, gateway)


def new_entries(before: list[LedgerEntry], after: list[LedgerEntry]) -> list[LedgerEntry]:
    """The entries `after` has that `before` had not, oldest first."""
    known = {entry.hash for entry in before}
    return sorted((e for e in after if e.hash not in known), key=lambda e: e.sequence)

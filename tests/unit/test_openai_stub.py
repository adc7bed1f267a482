"""The OpenAI-compatible stub answers real clients over TCP (tests/stubs/openai_stub.py).

The gateway tests of specs/CORE-003-gateway-and-budgets.md rely on it, so these tests pin
what the `openai` client and litellm see: valid completions, usage within max_tokens,
scripted failures surfacing as the right exceptions, and streams in the OpenAI format with
their faults (no usage, cut mid-way, a client that leaves).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from stubs.openai_stub import CREATED, StubServer

# Importing litellm fetches its price map from GitHub unless told not to; tests stay offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm
from litellm import exceptions as litellm_errors

# litellm's loggers have no level of their own, so a DEBUG root logger makes them log every
# call, from background threads too; these tests want its warnings only.
for _name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
    logging.getLogger(_name).setLevel(logging.WARNING)

REPO = Path(__file__).resolve().parents[2]
PROMPT = "Hello, stub. Please answer briefly."
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]


@pytest.fixture(autouse=True)
def quiet_root_logger() -> Iterator[None]:
    # An earlier test may leave the root logger at DEBUG with a handler on a stream that
    # pytest has since closed; asyncio's debug lines would then print "Logging error".
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    yield
    root.setLevel(level)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


def client(stub: StubServer) -> openai.OpenAI:
    # No client retries: each scripted failure must surface, not be retried away.
    return openai.OpenAI(base_url=stub.url + "/v1", api_key="x", max_retries=0)


def litellm_call(stub: StubServer, model: str = "openai/stub-model", **kwargs: Any) -> Any:
    return litellm.completion(
        model=model,
        messages=HELLO,
        api_base=stub.url + "/v1",
        api_key="x",
        max_retries=0,
        **kwargs,
    )


# ------------------------------------------------------------------ answers


def test_openai_client_gets_a_valid_completion(stub: StubServer) -> None:
    response = client(stub).chat.completions.create(model="stub-model", messages=HELLO)
    assert response.object == "chat.completion"
    assert response.id == "chatcmpl-stub-000001"
    assert response.created == CREATED
    assert response.model == "stub-model"
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == f"stub reply to 1 message(s): {PROMPT}"
    assert choice.finish_reason == "stop"
    assert response.usage is not None
    assert response.usage.prompt_tokens == len(PROMPT) // 4
    assert response.usage.completion_tokens == len(choice.message.content) // 4
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )
    assert stub.requests == [{"model": "stub-model", "messages": HELLO}]
    assert stub.request_headers[0]["Authorization"] == "Bearer x"


def test_answers_are_deterministic(stub: StubServer) -> None:
    first = client(stub).chat.completions.create(model="stub-model", messages=HELLO)
    second = client(stub).chat.completions.create(model="stub-model", messages=HELLO)
    assert first.choices == second.choices
    assert first.usage == second.usage
    assert (first.id, second.id) == ("chatcmpl-stub-000001", "chatcmpl-stub-000002")


@pytest.mark.parametrize(
    ("param", "max_tokens", "completion_tokens", "finish_reason"),
    [
        ("max_tokens", 1, 1, "length"),
        ("max_tokens", 3, 3, "length"),
        ("max_completion_tokens", 5, 5, "length"),
        ("max_tokens", 1_000, 15, "stop"),  # the whole 63-character reply
        ("max_completion_tokens", 1_000, 15, "stop"),
    ],
)
def test_completion_tokens_never_exceed_max_tokens(
    stub: StubServer, param: str, max_tokens: int, completion_tokens: int, finish_reason: str
) -> None:
    response = client(stub).chat.completions.create(
        model="stub-model",
        messages=HELLO,
        max_tokens=max_tokens if param == "max_tokens" else openai.omit,
        max_completion_tokens=max_tokens if param == "max_completion_tokens" else openai.omit,
    )
    assert response.usage is not None
    assert response.usage.completion_tokens == completion_tokens
    assert response.usage.completion_tokens <= max_tokens
    assert response.choices[0].finish_reason == finish_reason
    assert len(response.choices[0].message.content or "") <= max_tokens * 4


@pytest.mark.parametrize(
    ("content", "prompt_tokens"),
    [
        ("", 1),
        ("abc", 1),
        ("x" * 400, 100),
        ([{"type": "text", "text": "y" * 80}, {"type": "image_url", "image_url": {}}], 20),
    ],
)
def test_prompt_tokens_count_message_characters(
    stub: StubServer, content: Any, prompt_tokens: int
) -> None:
    response = client(stub).chat.completions.create(
        model="stub-model",
        messages=[{"role": "user", "content": content}],
    )
    assert response.usage is not None
    assert response.usage.prompt_tokens == prompt_tokens


def test_reply_fn_shapes_the_content(stub: StubServer) -> None:
    stub.reply_fn = lambda body: "def add(a, b):\n    return a + b\n" * body["n_copies"]
    response = client(stub).chat.completions.create(
        model="stub-model",
        messages=HELLO,
        extra_body={"n_copies": 2},
    )
    assert response.choices[0].message.content == "def add(a, b):\n    return a + b\n" * 2


def test_models_are_listed(stub: StubServer) -> None:
    stub.models = ["stub-model", "stub-fallback"]
    assert [m.id for m in client(stub).models.list()] == ["stub-model", "stub-fallback"]


def test_litellm_gets_a_valid_completion(stub: StubServer) -> None:
    response = litellm_call(stub, max_tokens=4)
    assert response.choices[0].message.content == "stub reply to 1 "  # cut at 4 * 4 chars
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 4
    assert response.usage.prompt_tokens == len(PROMPT) // 4
    assert stub.requests[0]["model"] == "stub-model"  # the provider prefix is stripped
    assert stub.requests[0]["max_tokens"] == 4


# ------------------------------------------------------------------ scripted failures


@pytest.mark.parametrize(
    ("status", "openai_error", "litellm_error"),
    [
        (429, openai.RateLimitError, litellm_errors.RateLimitError),
        (500, openai.InternalServerError, litellm_errors.InternalServerError),
        (503, openai.InternalServerError, litellm_errors.ServiceUnavailableError),
    ],
)
def test_scripted_failures_surface_as_errors(
    stub: StubServer,
    status: int,
    openai_error: type[openai.APIStatusError],
    litellm_error: type[Exception],
) -> None:
    stub.script.extend([status, "ok", status])
    with pytest.raises(openai_error) as raised:
        client(stub).chat.completions.create(model="stub-model", messages=HELLO)
    assert raised.value.status_code == status
    body = raised.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}  # the client unwraps "error"
    if status == 429:
        assert raised.value.response.headers["Retry-After"] == "0"
        assert body["code"] == "rate_limit_exceeded"

    assert client(stub).chat.completions.create(model="stub-model", messages=HELLO)

    with pytest.raises(litellm_error) as raised_by_litellm:
        litellm_call(stub)
    assert getattr(raised_by_litellm.value, "status_code", None) == status

    assert litellm_call(stub).choices[0].message.content  # the script is spent: ok again
    assert len(stub.requests) == 4


def test_fail_models_fail_one_model_always(stub: StubServer) -> None:
    stub.fail_models["stub-primary"] = 503
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client(stub).chat.completions.create(model="stub-primary", messages=HELLO)
    answer = client(stub).chat.completions.create(model="stub-fallback", messages=HELLO)
    assert answer.model == "stub-fallback"


def test_default_status_fails_everything_after_the_script(stub: StubServer) -> None:
    stub.script.append("ok")
    stub.default_status = 500
    assert client(stub).chat.completions.create(model="stub-model", messages=HELLO)
    with pytest.raises(openai.InternalServerError):
        client(stub).chat.completions.create(model="stub-model", messages=HELLO)


def test_openai_client_streams_the_same_answer_with_usage_when_asked(stub: StubServer) -> None:
    whole = client(stub).chat.completions.create(model="stub-model", messages=HELLO)
    chunks = list(
        client(stub).chat.completions.create(
            model="stub-model",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage == whole.usage
    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    # The client may read [DONE] before the stub's handler, in its own thread, records it.
    deadline = time.monotonic() + 10
    while stub.streams[-1].ended == "streaming" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [(r.chunks_sent, r.ended) for r in stub.streams] == [(len(chunks) + 1, "done")]


def test_a_stream_has_no_usage_unless_asked_or_when_scripted_out(stub: StubServer) -> None:
    plain = list(
        client(stub).chat.completions.create(model="stub-model", messages=HELLO, stream=True)
    )
    assert all(c.usage is None and c.choices for c in plain)
    stub.script.append("no-usage")
    asked = list(
        client(stub).chat.completions.create(
            model="stub-model", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.usage is None and c.choices for c in asked)
    assert len(asked) == len(plain)


def test_a_streamed_tool_call_comes_in_pieces(stub: StubServer) -> None:
    tool: ChatCompletionToolParam = {
        "type": "function",
        "function": {"name": "write_file", "parameters": {}},
    }
    chunks = list(
        client(stub).chat.completions.create(
            model="stub-model", messages=HELLO, tools=[tool], stream=True
        )
    )
    calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function is not None
    assert calls[0].function.name == "write_file"
    assert "".join((call.function.arguments or "") for call in calls if call.function) == (
        '{"reason": "stub"}'
    )
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_cut_stream_breaks_the_client_mid_answer(stub: StubServer) -> None:
    stub.script.append("stream-cut")
    stub.cut_after_chunks = 3
    received: list[Any] = []

    def read_all() -> None:
        stream = client(stub).chat.completions.create(
            model="stub-model", messages=HELLO, stream=True
        )
        received.extend(stream)

    # The body ends mid-chunk: the SDK's HTTP client raises it as it reads.
    with pytest.raises(httpx.RemoteProtocolError):
        read_all()
    assert len(received) == 3
    assert [(r.chunks_sent, r.ended) for r in stub.streams] == [(3, "cut")]


def test_litellm_streams_from_the_stub(stub: StubServer) -> None:
    chunks = list(litellm_call(stub, stream=True, stream_options={"include_usage": True}))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == f"stub reply to 1 message(s): {PROMPT}"
    assert chunks[-1].usage.prompt_tokens == len(PROMPT) // 4


def test_the_stub_sees_a_client_leave_a_slow_stream(stub: StubServer) -> None:
    stub.chunk_delay_seconds = 0.05
    stream = client(stub).chat.completions.create(model="stub-model", messages=HELLO, stream=True)
    for index, _ in enumerate(stream):
        if index == 1:
            break
    stream.close()
    record = stub.streams[0]
    for _ in range(600):  # the stub notices at its next write, 0.05 s later
        if record.ended != "streaming":
            break
        time.sleep(0.05)
    assert record.ended == "client-gone"
    assert record.chunks_sent < 15, "the rest of the answer was never sent"


def test_stream_options_need_a_stream(stub: StubServer) -> None:
    status, answer = post(
        stub.url + "/v1/chat/completions",
        json.dumps(
            {"model": "m", "messages": HELLO, "stream_options": {"include_usage": True}}
        ).encode(),
    )
    assert (status, answer["error"]["type"]) == (400, "invalid_request_error")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "'model' is required"),
        (b'{"model": "m", "messages": []}', "'messages' must be a non-empty array"),
        (b'{"model": "m", "messages": [{"content": "x"}], "max_tokens": 0}', "max_tokens"),
        (b'{"model": "m", "messages": [{"content": "x"}], "max_tokens": true}', "max_tokens"),
    ],
)
def test_invalid_requests_get_openai_style_400s(
    stub: StubServer, body: bytes, message: str
) -> None:
    status, answer = post(stub.url + "/v1/chat/completions", body)
    assert status == 400
    assert answer["error"]["type"] == "invalid_request_error"
    assert message in answer["error"]["message"]


def test_delay_still_answers(stub: StubServer) -> None:
    stub.delay_seconds = 0.01
    assert client(stub).chat.completions.create(model="stub-model", messages=HELLO)


# ------------------------------------------------------------------ async and CLI use


async def test_runs_in_the_callers_event_loop() -> None:
    async with StubServer() as server:
        server.script.append(429)
        async_client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            await async_client.chat.completions.create(model="stub-model", messages=HELLO)
        answer = await async_client.chat.completions.create(model="stub-model", messages=HELLO)
        assert answer.usage is not None
        await async_client.close()
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url


def test_runs_as_a_process_for_benchmarks() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "stubs" / "openai_stub.py"),
            "--port",
            "0",
            "--latency-ms",
            "1",
            "--behaviour",
            "503",
            "--fail-model",
            "broken=429",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = json.loads(process.stdout.readline())["url"]
        request = b'{"model": "stub-model", "messages": [{"role": "user", "content": "x"}]}'
        assert post(url + "/v1/chat/completions", request)[0] == 503
        assert (
            post(url + "/v1/chat/completions", request.replace(b"stub-model", b"broken"))[0] == 429
        )
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(  # noqa: S310 - a loopback http URL from the stub
        url, data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())

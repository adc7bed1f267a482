"""What a chat-completion request may hold (specs/CORE-003, "Protocol" and "Errors"): each
field of a wrong type is refused naming it, before anything is reserved or sent; a body that
is not JSON, nests too deeply, escapes half a surrogate pair or is declared as another media
type is `invalid_json`, never a 500. Found by the gateway fault suite's request fuzzing
(tests/fuzz/gateway_requests.py); each case here is one it met."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from smartspec.gateway.chat_request import read_json, validate_chat_request
from smartspec.gateway.errors import GatewayError

SERVED = frozenset({"stub-model"})
LIMIT = 1_048_576


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}], **fields}


def refusal(request: dict[str, Any]) -> tuple[int, str, object]:
    with pytest.raises(GatewayError) as raised:
        validate_chat_request(request, SERVED)
    return raised.value.status, raised.value.code, raised.value.extra.get("param")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # Each reached the provider after the call was reserved (a provider that takes it
        # was paid for a request the API refuses).
        ("temperature", "hot"),
        ("temperature", float("nan")),
        ("top_p", True),
        ("presence_penalty", [1]),
        ("frequency_penalty", {"k": 1}),
        ("seed", 1.5),
        ("seed", True),
        ("top_logprobs", "3"),
        ("logprobs", 1),
        ("parallel_tool_calls", "yes"),
        ("stop", 5),
        ("stop", ["END", 5]),
        ("logit_bias", [1, 2]),
        ("logit_bias", {"50256": "ban"}),
        ("response_format", "json"),
        ("response_format", {"schema": {}}),
        ("tool_choice", 1),
        ("tool_choice", {"function": {"name": "f"}}),
        ("reasoning_effort", 3),
        ("verbosity", ["low"]),
        ("user", 7),
        ("safety_identifier", {"id": 1}),
        ("prompt_cache_key", False),
        # True == 1 and 1.0 == 1 in Python: n passed as 1.
        ("n", True),
        ("n", 1.0),
        # It was named max_tokens.
        ("max_completion_tokens", "many"),
        ("max_completion_tokens", 0),
    ],
)
def test_a_field_of_the_wrong_type_is_refused_naming_it(field: str, value: object) -> None:
    assert refusal(body(**{field: value})) == (400, "invalid_request", field)


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": ["user"], "content": "hi"}], "messages[0].role"),  # was a TypeError: 500
        ([{"content": "hi"}], "messages[0].role"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
        ([{"role": "user", "content": [1, 2]}], "messages[0].content"),
        ([{"role": "user", "content": [{"text": "no type"}]}], "messages[0].content"),
        ([{"role": "user", "content": "hi", "name": 5}], "messages[0].name"),
        ([{"role": "user", "content": "hi"}, "user"], "messages[1]"),
    ],
)
def test_a_malformed_message_is_refused_naming_its_member(messages: list[Any], param: str) -> None:
    assert refusal(body(messages=messages)) == (400, "invalid_request", param)


def test_a_function_tool_without_a_name_names_the_name() -> None:
    tools = [{"type": "function", "function": {"name": 5}}]
    assert refusal(body(tools=tools)) == (400, "invalid_request", "tools[0].function.name")


def test_null_means_absent_and_good_values_pass() -> None:
    chat = validate_chat_request(
        body(
            temperature=None,
            max_tokens=None,
            max_completion_tokens=32,
            n=1,
            stop=["END"],
            logit_bias={"50256": -100},
            tool_choice={"type": "function", "function": {"name": "f"}},
            response_format={"type": "json_object"},
            messages=[
                {"role": "system", "content": None, "name": "sys"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            ],
        ),
        SERVED,
    )
    assert chat.max_tokens == 32


async def read(content: bytes, content_type: str | None = "application/json") -> Any:
    """What read_json makes of a body sent over HTTP: the object, or (status, code)."""

    async def handler(request: web.Request) -> web.Response:
        try:
            return web.json_response({"read": await read_json(request, LIMIT)})
        except GatewayError as error:
            return web.json_response({"refused": [error.status, error.code]})

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    headers = {"Content-Type": content_type} if content_type else {}
    try:
        async with (
            aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as session,
            session.post(f"http://127.0.0.1:{port}/", data=content, headers=headers) as response,
        ):
            answer = await response.json()
    finally:
        await runner.cleanup()
    return answer.get("read") or tuple(answer["refused"])


@pytest.mark.parametrize(
    "content",
    [
        b"[" * 100_000 + b"]" * 100_000,  # was a RecursionError: 500
        b'{"n":' * 100_000 + b"1" + b"}" * 100_000,
        # Priced, it raised UnicodeEncodeError: 500.
        json.dumps(body()).replace("hi", "\\ud800").encode(),
        json.dumps(body()).replace("hi", "a\\ude00b").encode(),
    ],
    ids=["deep list", "deep object", "lone high surrogate", "lone low surrogate"],
)
async def test_a_body_no_request_can_be_is_invalid_json(content: bytes) -> None:
    assert await read(content) == (400, "invalid_json")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_a_body_declared_as_another_type_is_invalid_json(content_type: str) -> None:
    # It was read as JSON whatever it was declared as.
    assert await read(json.dumps(body()).encode(), content_type) == (400, "invalid_json")


async def test_json_with_paired_surrogates_or_no_content_type_is_read() -> None:
    emoji = json.dumps(body()).replace("hi", "\\ud83d\\ude00").encode()
    assert (await read(emoji))["messages"][0]["content"] == "\U0001f600"
    assert (await read(json.dumps(body()).encode(), None))["model"] == "stub-model"
    charset = "application/json; charset=utf-8"
    assert (await read(json.dumps(body()).encode(), charset))["model"] == "stub-model"

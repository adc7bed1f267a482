"""Malformed chat-completion requests for the gateway, made by seeded mutation of one valid
request: wrong types for every accepted field, unknown parameters, huge and odd strings, deep
nesting, bodies that are not JSON or not an object, bodies over the size limit, garbled
Authorization and Content-Type headers, and run tokens that are expired, forged, for another
namespace, garbage or empty.

Each case names what it broke (`broke`) and the answer the gateway owes it
(specs/CORE-003-gateway-and-budgets.md, section "Errors"): the status, the error `code` and,
where one field is at fault, the `param` that names it. None of them may reach a provider or
cost a credit. The generator is pure: the test mints the tokens a case asks for (`token`)
and puts them where the case's Authorization header says `{token}`.
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

MODEL = "stub-model"
BODY_LIMIT = 1_048_576
"""SMARTSPEC_GATEWAY_MAX_BODY_BYTES's default: the gateway under test runs with it."""

TokenKind = Literal["valid", "expired", "bad_signature", "other_namespace", "unknown_run"]

# What each accepted field may hold (besides null, which means "absent" for every optional
# field), as JSON kinds; a wrong-type case picks a value of another kind.
FIELD_KINDS: dict[str, frozenset[str]] = {
    "model": frozenset({"string"}),
    "messages": frozenset({"list"}),
    "max_tokens": frozenset({"int"}),
    "max_completion_tokens": frozenset({"int"}),
    "temperature": frozenset({"int", "number"}),
    "top_p": frozenset({"int", "number"}),
    "stop": frozenset({"string", "list"}),
    "seed": frozenset({"int"}),
    "n": frozenset({"int"}),
    "stream": frozenset({"bool"}),
    "stream_options": frozenset({"object"}),
    "presence_penalty": frozenset({"int", "number"}),
    "frequency_penalty": frozenset({"int", "number"}),
    "logit_bias": frozenset({"object"}),
    "logprobs": frozenset({"bool"}),
    "top_logprobs": frozenset({"int"}),
    "response_format": frozenset({"object"}),
    "tools": frozenset({"list"}),
    "tool_choice": frozenset({"string", "object"}),
    "parallel_tool_calls": frozenset({"bool"}),
    "reasoning_effort": frozenset({"string"}),
    "verbosity": frozenset({"string"}),
    "user": frozenset({"string"}),
    "safety_identifier": frozenset({"string"}),
    "prompt_cache_key": frozenset({"string"}),
}
REQUIRED = frozenset({"model", "messages"})

# Values by kind; "nan" and "inf" are numbers JSON cannot hold (Python writes NaN, Infinity).
VALUES: dict[str, list[Any]] = {
    "string": ["", "text", "名前-🙂", "\u202eevil", "nul\x00byte"],
    "int": [-1, 0, 7, 2**53 + 1, 10**30],
    "number": [0.5, -3.25, float("nan"), float("inf"), -float("inf")],
    "bool": [True, False],
    "list": [[], ["a"], [1, 2], [{"k": "v"}]],
    "object": [{}, {"k": "v"}, {"type": 5}, {"n": {"n": 1}}],
}
# Members of a message that are checked, and what a message's own wrong values are.
MESSAGE_FIELDS: dict[str, list[Any]] = {
    "role": [None, 5, "", "wizard", "USER", "名前", "x" * 70_000, ["user"]],
    "content": [5, 1.5, True, {"text": "hi"}, [1, 2], ["text"], [{"text": 5}]],
    "name": [5, True, ["n"], {"n": 1}],
}
UNKNOWN_PARAMETERS = [
    "fallbacks",
    "api_base",
    "api_key",
    "mock_response",
    "service_tier",
    "metadata",
    "store",
    "functions",
    "Model",
    "",
    "名前",
    "x" * 5_000,
    "\u202emodel",
]
ODD_STRINGS = ["x" * 70_000, "名前-🙂", "\u202estub-model", "stub-model\x00", "stub-model ", " "]
BAD_JSON = [
    b"{nope",
    b"{'model': 'stub-model'}",
    b'{"model": "stub-model",}',
    b'{"model": "stub-model" "messages": []}',
    b"{" + b'"a":' * 3,
    b"\xff\xfd\xfc",
    b'{"model": "\xff"}',
    b"\x00",
    b"}{",
    b'{"model": "stub-model"}{"model": "stub-model"}',
]
NOT_OBJECTS = [b"[]", b"1", b'"text"', b"null", b"true", b"[{}]", b"NaN", b"-Infinity"]
WRONG_CONTENT_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "text/html; charset=utf-8",
    "application/octet-stream",
]
# (Authorization header, the code owed). `{token}` is the test's valid token.
GARBLED_AUTHORIZATION: list[tuple[str | None, str]] = [
    (None, "missing_token"),
    ("", "missing_token"),
    ("Bearer", "missing_token"),
    ("Bearer\t{token}", "missing_token"),
    ("Basic dXNlcjpwYXNzd29yZA==", "missing_token"),
    ("Token {token}", "missing_token"),
    ("{token}", "missing_token"),
    ("Bearer {token}x", "malformed"),
    ("Bearer {token} {token}", "malformed"),
    ("Bearer {token}.sst1", "malformed"),
    ("Bearer 名前", "malformed"),
    ("Bearer " + "a" * 5_000, "malformed"),
    ("Bearer sst1..", "malformed"),
    ("Bearer sst2.e30.AAAA", "malformed"),
]
TOKENS: list[tuple[TokenKind, int, str]] = [
    ("expired", 401, "expired"),
    ("bad_signature", 401, "bad_signature"),
    ("other_namespace", 403, "run_not_found"),
    ("unknown_run", 403, "run_not_found"),
]


@dataclass(frozen=True)
class Case:
    """One malformed request and the answer owed to it."""

    number: int
    kind: str
    broke: str
    """What the case broke: a field's path, a header, the token or the body as a whole."""
    content: bytes
    status: int
    code: str
    param: str | None = None
    """The field the error must name, when one field is at fault."""
    authorization: str | None = "Bearer {token}"
    token: TokenKind = "valid"  # noqa: S105 (which token the test mints, not a secret)
    content_type: str | None = "application/json"
    chunked: bool = False
    """Sent without a Content-Length (the gateway must stop reading at its limit)."""

    def __str__(self) -> str:
        return f"case {self.number} ({self.kind}: {self.broke})"


def valid_body() -> dict[str, Any]:
    """The request every body case starts from; the gateway would answer it."""
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You write code."},
            {"role": "user", "content": "Write a to-do API."},
        ],
        "max_tokens": 16,
    }


def encode(body: object) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"n": value}
    return value


def _wrong_type(number: int, rng: random.Random) -> Case:
    field = rng.choice(sorted(FIELD_KINDS))
    allowed = FIELD_KINDS[field]
    choices = [v for kind, values in VALUES.items() if kind not in allowed for v in values]
    if field in REQUIRED:
        choices.append(None)
    value = rng.choice(choices)
    body = {**valid_body(), field: value}
    if field == "stream_options":
        body["stream"] = True
    return _field_case(number, "wrong_type", field, body)


def _field_case(number: int, kind: str, param: str, body: dict[str, Any]) -> Case:
    """A body with one bad field: 400 naming it (an unknown model is 404, as OpenAI says)."""
    model = body.get("model")
    if param == "model" and isinstance(model, str) and model:
        return Case(number, kind, param, encode(body), 404, "model_not_found", param)
    code = "unsupported_tool" if param.startswith("tools[") else "invalid_request"
    return Case(number, kind, param, encode(body), 400, code, param)


def _boundary(number: int, rng: random.Random) -> Case:
    field, value = rng.choice(
        [
            ("max_tokens", 0),
            ("max_tokens", -5),
            ("max_tokens", 1_000_001),
            ("max_tokens", 2**63),
            ("max_completion_tokens", 0),
            ("max_completion_tokens", 10**12),
            ("n", 0),
            ("n", 2),
            ("n", 1.0),
            ("n", True),
            ("messages", []),
        ]
    )
    body = {**valid_body(), field: value}
    if field == "max_completion_tokens":
        del body["max_tokens"]
    return _field_case(number, "boundary", field, body)


def _message(number: int, rng: random.Random) -> Case:
    body = valid_body()
    index = rng.randrange(len(body["messages"]) + 2)
    messages = body["messages"]
    if index >= len(messages):  # the message itself is wrong
        messages.append(rng.choice([5, "user", None, ["user"], True]))
        return _field_case(number, "message", f"messages[{len(messages) - 1}]", body)
    member = rng.choice(sorted(MESSAGE_FIELDS))
    value = rng.choice(MESSAGE_FIELDS[member])
    messages[index] = {**messages[index], member: value}
    if member == "role" and value is None:
        del messages[index]["role"]
    return _field_case(number, "message", f"messages[{index}].{member}", body)


def _tool(number: int, rng: random.Random) -> Case:
    tool: Any = rng.choice(
        [
            5,
            "write_file",
            {"type": "mcp", "server_url": "http://elsewhere"},
            {"type": "function"},
            {"type": "function", "function": "write_file"},
            {"type": "web_search"},
        ]
    )
    if rng.random() < 0.5:  # a function without a usable name: one field of a good tool
        name = rng.choice([None, "", 5, ["f"]])
        function = {} if name is None else {"name": name}
        body = {**valid_body(), "tools": [{"type": "function", "function": function}]}
        param = "tools[0].function.name"
        return Case(number, "tool", param, encode(body), 400, "invalid_request", param)
    return _field_case(number, "tool", "tools[0]", {**valid_body(), "tools": [tool]})


def _unknown_parameter(number: int, rng: random.Random) -> Case:
    name = rng.choice(UNKNOWN_PARAMETERS)
    body = {**valid_body(), name: rng.choice(["x", 1, True, None, {"a": 1}, ["b"]])}
    content = encode(body)
    return Case(number, "unknown_parameter", name, content, 400, "unsupported_parameter", name)


def _odd_string(number: int, rng: random.Random) -> Case:
    """A huge or odd string where only a known value is accepted: the model, or a role."""
    value = rng.choice(ODD_STRINGS)
    body = valid_body()
    if rng.random() < 0.5:
        body["model"] = value
        return _field_case(number, "string", "model", body)
    body["messages"][1] = {"role": value, "content": "hi"}
    return _field_case(number, "string", "messages[1].role", body)


def _lone_surrogate(number: int, rng: random.Random) -> Case:
    """JSON text may escape half a UTF-16 pair (`\\ud800`): valid JSON, not a Unicode string."""
    body = valid_body()
    body["messages"][1]["content"] = "SURROGATE"
    escape = rng.choice(["\\ud800", "\\udfff", "a\\ud83d", "\\ude00b"])
    content = encode(body).replace(b"SURROGATE", escape.encode())
    return Case(number, "unicode", "messages[1].content", content, 400, "invalid_json")


def _deep(number: int, rng: random.Random) -> Case:
    """Nesting where a scalar belongs, or nesting past what any parser should follow."""
    depth = rng.choice([20, 150, 300, 100_000])
    if depth > 1_000:
        # Written out, not by json.dumps: its encoder recurses too.
        opening, closing = ("[", "]") if rng.random() < 0.5 else ('{"n":', "}")
        content = (opening * depth + "1" + closing * depth).encode()
        return Case(number, "deep", f"the body ({depth} levels)", content, 400, "invalid_json")
    field = rng.choice(
        ["temperature", "max_tokens", "user", "seed", "logit_bias", "response_format", "stop"]
    )
    return _field_case(number, "deep", field, {**valid_body(), field: nested(depth)})


def _invalid_json(number: int, rng: random.Random) -> Case:
    if rng.random() < 0.3:
        content = b"{" + rng.randbytes(rng.randrange(16, 200))
    else:
        content = rng.choice(BAD_JSON)
    return Case(number, "invalid_json", "the body", content, 400, "invalid_json")


def _truncated_json(number: int, rng: random.Random) -> Case:
    # No prefix of an object's text is JSON: the object closes at its last byte.
    whole = encode(valid_body())
    content = whole[: rng.randrange(0, len(whole))]
    return Case(
        number, "truncated_json", f"the body cut at {len(content)}", content, 400, "invalid_json"
    )


def _non_object(number: int, rng: random.Random) -> Case:
    content = rng.choice([*NOT_OBJECTS, encode([valid_body()]), encode(json.dumps(valid_body()))])
    return Case(number, "non_object", "the body", content, 400, "invalid_json")


def _empty(number: int, rng: random.Random) -> Case:
    content = rng.choice([b"", b" ", b"\n", b"\t\r\n "])
    return Case(number, "empty", "the body", content, 400, "invalid_json")


def _too_large(number: int, rng: random.Random) -> Case:
    body = valid_body()
    body["messages"][1]["content"] = "x" * (BODY_LIMIT + rng.randrange(1, 100_000))
    chunked = rng.random() < 0.5
    what = "the body, over the limit" + (" and sent without a length" if chunked else "")
    return Case(number, "too_large", what, encode(body), 413, "body_too_large", chunked=chunked)


def _content_type(number: int, rng: random.Random) -> Case:
    content_type = rng.choice(WRONG_CONTENT_TYPES)
    return Case(
        number,
        "content_type",
        f"Content-Type: {content_type}",
        encode(valid_body()),
        400,
        "invalid_json",
        content_type=content_type,
    )


def _authorization(number: int, rng: random.Random) -> Case:
    header, code = rng.choice(GARBLED_AUTHORIZATION)
    shown = "no Authorization" if header is None else f"Authorization: {header[:40]!r}"
    return Case(
        number, "authorization", shown, encode(valid_body()), 401, code, authorization=header
    )


def _token(number: int, rng: random.Random) -> Case:
    if rng.random() < 0.35:  # garbage: random text, or the right shape with random parts
        if rng.random() < 0.5:
            alphabet = string.ascii_letters + string.digits + "-_.~+/="
            garbage = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 300)))
            if garbage.count(".") == 2 and garbage.startswith("sst1."):
                garbage += "."  # never the token's shape by chance
            return Case(
                number,
                "token",
                "a garbage token",
                encode(valid_body()),
                401,
                "malformed",
                authorization=f"Bearer {garbage}",
            )
        claims = _b64(rng.randbytes(rng.randrange(1, 120)))
        signature = _b64(rng.randbytes(32))
        return Case(
            number,
            "token",
            "a forged token (random claims, random signature)",
            encode(valid_body()),
            401,
            "bad_signature",
            authorization=f"Bearer sst1.{claims}.{signature}",
        )
    kind, status, code = rng.choice(TOKENS)
    return Case(
        number, "token", f"a token that is {kind}", encode(valid_body()), status, code, token=kind
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


MAKERS: list[tuple[str, Callable[[int, random.Random], Case]]] = [
    ("wrong_type", _wrong_type),
    ("wrong_type", _wrong_type),
    ("wrong_type", _wrong_type),
    ("boundary", _boundary),
    ("message", _message),
    ("message", _message),
    ("tool", _tool),
    ("unknown_parameter", _unknown_parameter),
    ("string", _odd_string),
    ("unicode", _lone_surrogate),
    ("deep", _deep),
    ("invalid_json", _invalid_json),
    ("truncated_json", _truncated_json),
    ("non_object", _non_object),
    ("empty", _empty),
    ("too_large", _too_large),
    ("content_type", _content_type),
    ("authorization", _authorization),
    ("token", _token),
    ("token", _token),
]
KINDS = sorted({kind for kind, _ in MAKERS})


def cases(count: int, seed: int) -> list[Case]:
    """`count` malformed requests, the same ones for the same seed; every kind in turn."""
    rng = random.Random(seed)  # noqa: S311 (test inputs, not secrets)
    return [MAKERS[number % len(MAKERS)][1](number, rng) for number in range(count)]

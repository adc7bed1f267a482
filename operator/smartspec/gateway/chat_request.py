"""What a Chat Completions request may ask for, checked before anything is spent.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Protocol".

The accepted body becomes the Router's keyword arguments, so only listed fields pass; the
prompt's token bound (bytes plus framing) is what the call's worst case is priced at.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

from aiohttp import web

from smartspec.gateway.errors import GatewayError, bad_request

DEFAULT_MAX_TOKENS = 4096
MAX_TOKENS_LIMIT = 1_000_000
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Only these Chat Completions parameters reach the Router. Everything else in a body would be
# passed to litellm as a keyword argument, where names such as `fallbacks`, `api_base` or
# `mock_response` steer routing past the budget's model policy. Left out on purpose: what
# changes the price (service_tier, prediction, audio, web_search_options) or asks the
# provider to keep the data (store, metadata).
ACCEPTED_PARAMETERS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "n",
        "stream",
        "stream_options",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning_effort",
        "verbosity",
        "user",
        "safety_identifier",
        "prompt_cache_key",
    }
)


# The stream options a client may set: include_usage only decides whether the client gets
# the usage chunk; the gateway always asks the upstream for it (it settles by it).
_STREAM_OPTIONS = frozenset({"include_usage"})


@dataclass(frozen=True)
class ChatRequest:
    """A checked request: its body as sent, the model and the max_tokens asked for."""

    body: dict[str, Any]
    model: str
    max_tokens: int
    stream: bool = False
    include_usage: bool = False
    """A streamed request's `stream_options.include_usage`: the client wants the usage chunk."""

    @property
    def prompt_token_bound(self) -> int:
        return prompt_token_bound(self.body)

    def upstream(self, max_tokens: int) -> dict[str, Any]:
        """The body sent upstream: max_tokens explicit (the granted number, one name)."""
        body = {**self.body, "model": self.model, "max_tokens": max_tokens}
        body.pop("max_completion_tokens", None)
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return body


async def read_json(request: web.Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object of at most `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise GatewayError(
            413, "invalid_request_error", f"request body over {limit} bytes", "body_too_large"
        )
    # A body declared as something else (a form, text) is not read as JSON by accident.
    if "Content-Type" in request.headers and request.content_type != "application/json":
        raise _invalid_json(f"request body must be application/json, not {request.content_type}")
    raw = await read_body(request, limit + 1)
    if len(raw) > limit:
        raise GatewayError(
            413, "invalid_request_error", f"request body over {limit} bytes", "body_too_large"
        )
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _invalid_json(f"request body is not JSON: {error}") from None
    except RecursionError:  # the parser recurses once per level of nesting
        raise _invalid_json("request body nests too deeply") from None
    if not isinstance(body, dict):
        raise _invalid_json("request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw) and not _is_unicode(body):
        # JSON may escape half a UTF-16 pair; such a string cannot be encoded, priced or sent.
        raise _invalid_json("request body holds an unpaired UTF-16 surrogate escape")
    return body


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _is_unicode(body: dict[str, Any]) -> bool:
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def _invalid_json(message: str) -> GatewayError:
    return GatewayError(400, "invalid_request_error", message, "invalid_json")


async def read_body(request: web.Request, most: int) -> bytes:
    """The body up to `most` bytes. One `read` returns what has arrived so far: a body
    that crosses the network in several segments needs reading until EOF."""
    chunks: list[bytes] = []
    size = 0
    while size < most:
        chunk = await request.content.read(most - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def validate_chat_request(body: dict[str, Any], served: frozenset[str]) -> ChatRequest:
    """The checked request, or a GatewayError naming the first field that is wrong.

    Every accepted field is checked for its type here: a wrong one would otherwise reach the
    provider after the call was reserved (or make litellm fail), and a provider that takes it
    would be paid for a request the API refuses.
    """
    unsupported = sorted(set(body) - ACCEPTED_PARAMETERS)
    if unsupported:
        raise bad_request(
            f"unsupported parameter(s) {', '.join(unsupported)}; this gateway accepts "
            f"{', '.join(sorted(ACCEPTED_PARAMETERS))}",
            unsupported[0],
            code="unsupported_parameter",
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required and must be a string", "model")
    if model not in served:
        raise GatewayError(
            404,
            "invalid_request_error",
            f"model {model} is not served by this gateway",
            "model_not_found",
            param="model",
        )
    stream, include_usage = _stream_fields(body)
    n = body.get("n")
    if n is not None and not (is_int(n) and n == 1):
        raise bad_request("n must be 1", "n")
    _validate_messages(body.get("messages"))
    _validate_tools(body.get("tools"))
    for name, (is_valid, kind) in _FIELD_TYPES.items():
        value = body.get(name)
        if value is not None and not is_valid(value):  # null means absent, as in the API
            raise bad_request(f"{name} must be {kind}", name)
    return ChatRequest(body, model, _max_tokens(body), stream, include_usage)


def is_int(value: object) -> TypeGuard[int]:
    """An integer, not a boolean (JSON has no integer type of its own)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite number, not a boolean."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)  # Python reads NaN and Infinity from JSON text


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def is_str(value: object) -> TypeGuard[str]:
    return isinstance(value, str)


def is_typed_object(value: object) -> TypeGuard[dict[str, Any]]:
    """An object with a string `type` (a content part, a response format, a tool choice)."""
    return isinstance(value, dict) and isinstance(value.get("type"), str)


def _is_stop(value: object) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    )


def _is_logit_bias(value: object) -> bool:
    return isinstance(value, dict) and all(is_number(bias) for bias in value.values())


def _is_tool_choice(value: object) -> bool:
    return isinstance(value, str) or is_typed_object(value)


# The optional fields checked by their type alone: (is it valid, what it must be).
_FIELD_TYPES: dict[str, tuple[Callable[[object], bool], str]] = {
    "temperature": (is_number, "a number"),
    "top_p": (is_number, "a number"),
    "presence_penalty": (is_number, "a number"),
    "frequency_penalty": (is_number, "a number"),
    "seed": (is_int, "an integer"),
    "top_logprobs": (is_int, "an integer"),
    "logprobs": (_is_bool, "true or false"),
    "parallel_tool_calls": (_is_bool, "true or false"),
    "stop": (_is_stop, "a string or a list of strings"),
    "logit_bias": (_is_logit_bias, "an object of token ids to numbers"),
    "response_format": (is_typed_object, "an object with a string type"),
    "tool_choice": (_is_tool_choice, "a string or an object with a string type"),
    "reasoning_effort": (is_str, "a string"),
    "verbosity": (is_str, "a string"),
    "user": (is_str, "a string"),
    "safety_identifier": (is_str, "a string"),
    "prompt_cache_key": (is_str, "a string"),
}


def _max_tokens(body: dict[str, Any]) -> int:
    """The completion tokens asked for: max_tokens, else max_completion_tokens, else the
    default; each one given must be an integer in range."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and not (is_int(value) and 1 <= value <= MAX_TOKENS_LIMIT):
            raise bad_request(f"{name} must be an integer from 1 to {MAX_TOKENS_LIMIT}", name)
    for name in ("max_tokens", "max_completion_tokens"):
        if body.get(name) is not None:
            return int(body[name])
    return DEFAULT_MAX_TOKENS


def _validate_messages(messages: object) -> None:
    """A non-empty list of objects, each with a known role, and content and name of the
    types the API takes (what prompt_token_bound prices)."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object", where)
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise bad_request(f"{where}.role must be one of {sorted(_ROLES)}", f"{where}.role")
        content = message.get("content")
        if not (
            content is None
            or isinstance(content, str)
            or (isinstance(content, list) and all(is_typed_object(part) for part in content))
        ):
            raise bad_request(
                f"{where}.content must be a string or a list of parts (objects with a string type)",
                f"{where}.content",
            )
        if not isinstance(message.get("name", ""), str):
            raise bad_request(f"{where}.name must be a string", f"{where}.name")


def _stream_fields(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, stream_options.include_usage), checked as the OpenAI API checks them."""
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false", "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
    if not isinstance(options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    unknown = sorted(set(options) - _STREAM_OPTIONS)
    if unknown:
        raise bad_request(
            f"unsupported stream option(s) {', '.join(unknown)}; this gateway accepts "
            "include_usage",
            f"stream_options.{unknown[0]}",
            code="unsupported_parameter",
        )
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_request(
            "stream_options.include_usage must be true or false", "stream_options.include_usage"
        )
    return stream, include_usage


def _validate_tools(tools: object) -> None:
    """Function tools only: other tool types make litellm or the provider act on their own
    (litellm's MCP tools would have the gateway connect to a server the request names)."""
    if tools is None:
        return
    if not isinstance(tools, list):
        raise bad_request("tools must be a list", "tools")
    for index, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        function = tool.get("function") if isinstance(tool, dict) else None
        if kind != "function" or not isinstance(function, dict):
            raise bad_request(
                f"tools[{index}] must be a function tool ({{'type': 'function', 'function': "
                f"{{...}}}}); type {kind!r} is not supported",
                f"tools[{index}]",
                code="unsupported_tool",
            )
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise bad_request(
                f"tools[{index}].function.name is required and must be a string",
                f"tools[{index}].function.name",
            )


def prompt_token_bound(body: dict[str, Any]) -> int:
    """An upper bound of the prompt's tokens that holds for byte-level BPE tokenizers.

    Such a tokenizer never makes more tokens than the text has UTF-8 bytes; add each
    message's framing (role and separators), the tool calls an assistant message carries
    and the id a tool's answer names, and the tool definitions. It overestimates (about
    four times for English), which only makes reservations conservative: the settlement
    charges what the provider reports.
    """
    total = 16
    for message in body.get("messages", []):
        total += 8 + len(json.dumps(message.get("content"), ensure_ascii=False).encode())
        total += len(str(message.get("name", "")).encode())
        if message.get("tool_calls"):
            total += len(json.dumps(message["tool_calls"], ensure_ascii=False).encode())
        total += len(str(message.get("tool_call_id") or "").encode())
    if body.get("tools"):
        total += len(json.dumps(body["tools"], ensure_ascii=False).encode())
    return total

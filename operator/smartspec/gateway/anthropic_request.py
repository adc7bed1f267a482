"""What an Anthropic Messages request may ask for, checked before anything is spent.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Anthropic Messages".

The rules of `chat_request` hold here too: only listed fields pass, at every level (a
message, a content block, a tool), each one checked for its JSON type, and `null` is an
absent field (here whatever its name: it carries nothing upstream). A wrong one is a 400
naming its exact path (`messages[1].content[0].type`), written in Anthropic's error shape
by the endpoint. What passes is translated into the chat
request the route is called with (`anthropic_translation`), so a checked request is one
the translation fully understands: nothing in it is dropped on the way upstream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from smartspec.gateway.anthropic_translation import chat_body
from smartspec.gateway.chat_request import (
    MAX_TOKENS_LIMIT,
    ChatRequest,
    is_int,
    is_number,
    is_str,
    is_typed_object,
)
from smartspec.gateway.errors import GatewayError, bad_request

# Left out on purpose: `thinking` (not translated: a thinking block returned without its
# signature could not be sent back), `service_tier`, `container`, `mcp_servers` and
# server tools (they change the price or have the provider act on its own), and whatever
# Anthropic adds next.
ACCEPTED_FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "stream",
        "metadata",
        "tools",
        "tool_choice",
    }
)
BLOCK_TYPES = {"user": ("text", "tool_result"), "assistant": ("text", "tool_use")}
"""The content blocks each role may send (what the translation carries to a chat request)."""
TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})

Check = Callable[[object, str], None]
"""Checks one value; raises a 400 naming `where` (its path in the body) when it is wrong."""


@dataclass(frozen=True)
class MessagesRequest:
    """A checked Messages request: its body as sent, and what the endpoint needs of it."""

    body: dict[str, Any]
    model: str
    max_tokens: int
    stream: bool = False
    stop_sequences: tuple[str, ...] = ()

    def chat_request(self) -> ChatRequest:
        """The chat request the route is called with: reserved, sent, settled as any."""
        return ChatRequest(chat_body(self.body), self.model, self.max_tokens, self.stream)


def validate_messages_request(body: dict[str, Any], served: frozenset[str]) -> MessagesRequest:
    """The checked request, or a GatewayError naming the first field that is wrong."""
    _fields(body, "", _REQUEST, required=("model", "max_tokens", "messages"))
    model = body["model"]
    if model not in served:
        raise GatewayError(
            404,
            "not_found_error",
            f"model {model} is not served by this gateway",
            "model_not_found",
            param="model",
        )
    if body.get("tool_choice") is not None and not body.get("tools"):
        raise bad_request("tool_choice requires tools", "tool_choice")
    return MessagesRequest(
        body,
        model,
        body["max_tokens"],
        body.get("stream") is True,
        tuple(body.get("stop_sequences") or ()),
    )


# ---------------------------------------------------------------------- the checks


def _fields(
    value: object,
    where: str,
    checks: Mapping[str, Check],
    *,
    required: tuple[str, ...] = (),
    what: str = "field",
) -> None:
    """An object with only the listed fields, each valid. A null field is absent, listed or
    not: an SDK that sends back a block it was answered writes its unset fields as null."""
    if not isinstance(value, dict):
        raise bad_request(f"{where or 'the request body'} must be an object", where or "body")
    unknown = sorted(name for name in value if name not in checks and value[name] is not None)
    if unknown:
        path = _join(where, unknown[0])
        raise bad_request(
            f"{path}: unsupported {what} {unknown[0]!r}; this gateway accepts "
            f"{', '.join(sorted(checks))}",
            path,
            code="unsupported_parameter",
        )
    for name in required:
        if value.get(name) is None:
            path = _join(where, name)
            raise bad_request(f"{path}: field required", path)
    for name, check in checks.items():
        if value.get(name) is not None:
            check(value[name], _join(where, name))


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _typed(is_valid: Callable[[object], bool], kind: str) -> Check:
    def check(value: object, where: str) -> None:
        if not is_valid(value):
            raise bad_request(f"{where} must be {kind}", where)

    return check


def _list_of(item: Check, *, non_empty: bool = False) -> Check:
    def check(value: object, where: str) -> None:
        if not isinstance(value, list) or (non_empty and not value):
            raise bad_request(f"{where} must be a {'non-empty ' if non_empty else ''}list", where)
        for index, element in enumerate(value):
            item(element, f"{where}[{index}]")

    return check


def _is_max_tokens(value: object) -> bool:
    return is_int(value) and 1 <= value <= MAX_TOKENS_LIMIT


def _is_object(value: object) -> bool:
    return isinstance(value, dict)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_count(value: object) -> bool:
    return is_int(value) and value >= 0


_string = _typed(is_str, "a string")
_cache_control = _typed(is_typed_object, "an object with a string type")
_text_block_fields: dict[str, Check] = {
    "type": _string,
    "text": _string,
    "cache_control": _cache_control,
}


def _text_block(value: object, where: str) -> None:
    _block_type(value, where, ("text",))
    _fields(value, where, _text_block_fields, required=("text",))


def _block_type(value: object, where: str, accepted: tuple[str, ...]) -> None:
    if not is_typed_object(value):
        raise bad_request(f"{where} must be a content block (an object with a string type)", where)
    kind = value["type"]
    if kind not in accepted:
        raise bad_request(
            f"{where}.type: content block type {kind!r} is not supported here; this gateway "
            f"accepts {', '.join(accepted)}",
            f"{where}.type",
            code="unsupported_content",
        )


def _tool_result_content(value: object, where: str) -> None:
    if not isinstance(value, str):
        _list_of(_text_block)(value, where)


_BLOCKS: dict[str, tuple[dict[str, Check], tuple[str, ...]]] = {
    "text": (_text_block_fields, ("text",)),
    "tool_use": (
        {
            "type": _string,
            "id": _string,
            "name": _string,
            "input": _typed(_is_object, "an object"),
            "cache_control": _cache_control,
        },
        ("id", "name", "input"),
    ),
    "tool_result": (
        {
            "type": _string,
            "tool_use_id": _string,
            "content": _tool_result_content,
            "is_error": _typed(_is_bool, "true or false"),
            "cache_control": _cache_control,
        },
        ("tool_use_id",),
    ),
}


def _message(value: object, where: str) -> None:
    if not isinstance(value, dict):
        raise bad_request(f"{where} must be an object", where)
    role = value.get("role")
    if role not in BLOCK_TYPES:
        raise bad_request(f"{where}.role must be one of user, assistant", f"{where}.role")
    _fields(value, where, {"role": _string, "content": _nothing}, required=("content",))
    content = value["content"]
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise bad_request(
            f"{where}.content must be a string or a list of content blocks", f"{where}.content"
        )
    for index, block in enumerate(content):
        at = f"{where}.content[{index}]"
        _block_type(block, at, BLOCK_TYPES[role])
        fields, required = _BLOCKS[block["type"]]
        _fields(block, at, fields, required=required)


def _nothing(value: object, where: str) -> None:
    """A field checked by its container."""


def _system(value: object, where: str) -> None:
    if not isinstance(value, str):
        _list_of(_text_block)(value, where)


def _tool(value: object, where: str) -> None:
    if isinstance(value, dict) and value.get("type") not in (None, "custom"):
        raise bad_request(
            f"{where}.type: tool type {value['type']!r} is not supported; this gateway accepts "
            "custom tools (name, description, input_schema): a server tool would have the "
            "provider act, and charge, on its own",
            f"{where}.type",
            code="unsupported_tool",
        )
    _fields(
        value,
        where,
        {
            "type": _string,
            "name": _typed(lambda name: is_str(name) and bool(name), "a non-empty string"),
            "description": _string,
            "input_schema": _typed(_is_object, "an object (a JSON schema)"),
            "strict": _typed(_is_bool, "true or false"),
            "cache_control": _cache_control,
        },
        required=("name", "input_schema"),
    )


def _tool_choice(value: object, where: str) -> None:
    _fields(
        value,
        where,
        {
            "type": _typed(lambda kind: kind in TOOL_CHOICES, f"one of {sorted(TOOL_CHOICES)}"),
            "name": _string,
            "disable_parallel_tool_use": _typed(_is_bool, "true or false"),
        },
        required=("type",),
    )
    if isinstance(value, dict) and value["type"] == "tool" and value.get("name") is None:
        raise bad_request(f"{where}.name: field required for type tool", f"{where}.name")


def _metadata(value: object, where: str) -> None:
    _fields(value, where, {"user_id": _string})


_REQUEST: dict[str, Check] = {
    "model": _typed(lambda model: is_str(model) and bool(model), "a non-empty string"),
    "max_tokens": _typed(_is_max_tokens, f"an integer from 1 to {MAX_TOKENS_LIMIT}"),
    "messages": _list_of(_message, non_empty=True),
    "system": _system,
    "temperature": _typed(is_number, "a number"),
    "top_p": _typed(is_number, "a number"),
    "top_k": _typed(_is_count, "a non-negative integer"),
    "stop_sequences": _list_of(_string),
    "stream": _typed(_is_bool, "true or false"),
    "metadata": _metadata,
    "tools": _list_of(_tool),
    "tool_choice": _tool_choice,
}

"""Anthropic Messages and Chat Completions: a checked Messages request as the chat request
the route is called with, and a chat answer as an Anthropic Message.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Anthropic Messages".

Pure: JSON objects in, JSON objects out. The route's provider is still litellm's business:
the chat request goes through the Router like any other, so a route on Anthropic's API is
called by litellm's Anthropic provider.

Why not litellm's own adapter (`LiteLLMAnthropicMessagesAdapter`, litellm 1.106), which its
proxy uses for the same job:
- it drops content blocks and tool types it does not know without a word, and passes
  Anthropic's server tools through to the provider; the gateway refuses both, naming them
  (`anthropic_request`), so the translation only ever sees what it fully carries;
- it writes keys with null values into the messages (`thinking_blocks: None`), which the
  `openai-compatible` transport would send upstream as they are;
- it renames tools longer than 64 characters, so every answer and every streamed chunk
  would need the names mapped back;
- its answer and stream translation work on litellm's response objects, while the gateway
  relays plain JSON from two transports (the `openai-compatible` one never builds litellm
  objects: section "Measured"), and its stream wrapper decides usage and stop events itself,
  where the gateway must settle by the usage the provider sent;
- it reports `input_tokens` net of cache reads and never says `stop_sequence`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
"""Chat finish reasons as Anthropic stop reasons; any other is end_turn."""

_PASSED_AS_IS = ("temperature", "top_p", "top_k", "stream")


# ---------------------------------------------------------------------- the request


def chat_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The chat request for a checked Messages request: the system prompt as the first
    message, each message as one or more chat messages, tools as function tools."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _parts(system)})
    for message in body["messages"]:
        if message["role"] == "user":
            messages += _user_messages(message["content"])
        else:
            messages.append(_assistant_message(message["content"]))
    chat: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": body["max_tokens"],
    }
    chat.update({name: body[name] for name in _PASSED_AS_IS if body.get(name) is not None})
    if body.get("stop_sequences"):
        chat["stop"] = list(body["stop_sequences"])
    user = (body.get("metadata") or {}).get("user_id")
    if user is not None:
        chat["user"] = user
    if body.get("tools"):
        chat["tools"] = [_function_tool(tool) for tool in body["tools"]]
    if body.get("tool_choice") is not None:
        chat.update(_tool_choice(body["tool_choice"]))
    return chat


def _parts(content: str | Sequence[Mapping[str, Any]]) -> str | list[dict[str, Any]]:
    """A string as it is; text blocks as text parts (their cache_control left behind)."""
    if isinstance(content, str):
        return content
    return [{"type": "text", "text": block["text"]} for block in content]


def _user_messages(content: str | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Tool results become tool messages (first: they answer the previous assistant turn);
    the text blocks, one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    messages = [
        {
            "role": "tool",
            "tool_call_id": block["tool_use_id"],
            "content": _tool_result(block.get("content")),
        }
        for block in content
        if block["type"] == "tool_result"
    ]
    texts = [block for block in content if block["type"] == "text"]
    if texts or not messages:
        messages.append({"role": "user", "content": _parts(texts)})
    return messages


def _tool_result(content: str | Sequence[Mapping[str, Any]] | None) -> str | list[dict[str, Any]]:
    """A tool result's content: a string; one text block as its text; several as parts.
    (Chat has no error flag: `is_error` is not carried, the content says what failed.)"""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = [{"type": "text", "text": block["text"]} for block in content]
    return parts[0]["text"] if len(parts) == 1 else parts


def _assistant_message(content: str | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Text blocks joined as the content, tool_use blocks as tool calls."""
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text = "".join(block["text"] for block in content if block["type"] == "text")
    calls = [
        {
            "id": block["id"],
            "type": "function",
            "function": {"name": block["name"], "arguments": _json(block["input"])},
        }
        for block in content
        if block["type"] == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _function_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Mapping[str, Any]) -> dict[str, Any]:
    """auto → auto, any → required, none → none, tool → that function; and
    disable_parallel_tool_use as parallel_tool_calls."""
    kind = choice["type"]
    chat: dict[str, Any] = {
        "tool_choice": (
            {"type": "function", "function": {"name": choice["name"]}}
            if kind == "tool"
            else {"auto": "auto", "any": "required", "none": "none"}[kind]
        )
    }
    if choice.get("disable_parallel_tool_use") is not None and kind != "none":
        chat["parallel_tool_calls"] = not choice["disable_parallel_tool_use"]
    return chat


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------- the answer


def stop_reason(finish_reason: str | None, stop_sequence: str | None) -> str:
    """Anthropic's stop reason: stop_sequence when a stop sequence was hit, else the chat
    finish reason mapped (`STOP_REASONS`)."""
    if stop_sequence is not None:
        return "stop_sequence"
    return STOP_REASONS.get(finish_reason or "", "end_turn")


def matched_stop(choice: Mapping[str, Any], stop_sequences: Sequence[str]) -> str | None:
    """The stop sequence a choice ended on, when the upstream names it: vLLM's `stop_reason`
    (litellm keeps it in `provider_specific_fields`). OpenAI's API does not say, and neither
    does litellm's Anthropic provider: such an answer ends with end_turn."""
    named = choice.get("stop_reason")
    if named is None:
        named = (choice.get("provider_specific_fields") or {}).get("stop_reason")
    return named if isinstance(named, str) and named in stop_sequences else None


def tool_input(arguments: object) -> dict[str, Any]:
    """A tool call's arguments as the tool_use block's input: the JSON object they hold,
    else {} (arguments a model broke or max_tokens cut are no object)."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def anthropic_message(
    completion: Mapping[str, Any],
    *,
    message_id: str,
    model: str,
    stop_sequences: Sequence[str],
    usage: tuple[int, int],
) -> dict[str, Any]:
    """A chat completion as an Anthropic Message: its text, then its tool calls as tool_use
    blocks; `usage` the (input, output) tokens the call was settled at. Streamed reasoning
    is not part of it: Anthropic returns thinking only when asked, and this gateway does
    not take `thinking` (it is charged all the same)."""
    choice: Mapping[str, Any] = (completion.get("choices") or [{}])[0]
    message: Mapping[str, Any] = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = _text(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "",
                "name": function.get("name") or "",
                "input": tool_input(function.get("arguments")),
            }
        )
    stop_sequence = matched_stop(choice, stop_sequences)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), stop_sequence),
        "stop_sequence": stop_sequence,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
    }


def _text(content: object) -> str:
    """A chat message's content as text: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""

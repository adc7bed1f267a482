"""Anthropic's Messages API as the stub server answers it, for routes whose provider is
Anthropic's API (litellm's Anthropic provider calls `<apiBase>/v1/messages`).

A stub: the answer is canned like the OpenAI-compatible one's (`reply_fn` of the request
body), input tokens are the characters of the system prompt and messages // 4 (at least 1),
output tokens the reply's characters // 4 (at least 1), never more than max_tokens (the
reply is then cut and stops with "max_tokens"). Streamed, it is Anthropic's events: the
message, one text block in pieces, the stop reason and usage. See
specs/CORE-003-gateway-and-budgets.md, section "Anthropic Messages".
"""

from __future__ import annotations

import json
from typing import Any


def text_of(content: object) -> str:
    """A string, or the text of a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            block["text"]
            for block in content
            if isinstance(block, dict) and isinstance(block.get("text"), str)
        )
    return ""


def message_answer(body: dict[str, Any], reply: str, number: int) -> dict[str, Any]:
    """The Message for this request and canned reply."""
    prompt = text_of(body.get("system")) + "".join(
        text_of(message.get("content")) for message in body.get("messages") or []
    )
    output_tokens = max(1, len(reply) // 4)
    stop_reason = "end_turn"
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and output_tokens > max_tokens:
        reply, output_tokens, stop_reason = reply[: max_tokens * 4], max_tokens, "max_tokens"
    return {
        "id": f"msg_stub_{number:06d}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [{"type": "text", "text": reply}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": max(1, len(prompt) // 4), "output_tokens": output_tokens},
    }


def message_events(answer: dict[str, Any], chunk_chars: int) -> list[bytes]:
    """The Message as Anthropic streams it."""
    text = answer["content"][0]["text"]
    usage = answer["usage"]
    start = {
        **answer,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1},
    }
    pieces = [text[at : at + chunk_chars] for at in range(0, len(text), chunk_chars)]
    return [
        _event("message_start", message=start),
        _event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        *(
            _event("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
            for piece in pieces
        ),
        _event("content_block_stop", index=0),
        _event(
            "message_delta",
            delta={"stop_reason": answer["stop_reason"], "stop_sequence": None},
            usage={"output_tokens": usage["output_tokens"]},
        ),
        _event("message_stop"),
    ]


def _event(name: str, **data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()

"""Streamed Anthropic Messages: the upstream's Chat Completions chunks written as Anthropic's
server-sent events, and a recorded Message replayed as the same events.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Anthropic Messages".

The events, in Anthropic's order: `message_start` (at the upstream's first chunk; usage not
known yet, so 0), for each content block `content_block_start`, its `content_block_delta`s
(`text_delta`, or `input_json_delta` with a tool call's arguments as they arrive) and
`content_block_stop`; once the upstream has finished, `message_delta` with the stop reason
and the usage the call is settled at, and `message_stop`. An upstream that breaks ends the
stream with `event: error` (Anthropic's clients raise it), and nothing after it. The relay,
the count of what was delivered and the settlement are `streaming`'s and `app`'s, shared
with chat streams.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from smartspec.gateway.anthropic_translation import (
    anthropic_message,
    matched_stop,
    stop_reason,
)
from smartspec.gateway.errors import anthropic_error_type
from smartspec.gateway.router import UpstreamError
from smartspec.gateway.streaming import StreamedAnswer
from smartspec.logic.spending import estimated_completion_tokens


def event(name: str, data: Mapping[str, Any]) -> bytes:
    """One named server-sent event: `event: <name>`, `data: <json>` and a blank line."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {name}\ndata: {text}\n\n".encode()


def _typed(name: str, **data: Any) -> bytes:
    return event(name, {"type": name, **data})


def _message_start(message_id: str, model: str) -> bytes:
    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    return _typed("message_start", message=message)


def _ending(reason: str, stop_sequence: str | None, usage: Mapping[str, Any]) -> bytes:
    """message_delta (stop reason, and usage as cumulative totals) and message_stop."""
    delta = {"stop_reason": reason, "stop_sequence": stop_sequence}
    counts = {"input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"]}
    return _typed("message_delta", delta=delta, usage=counts) + _typed("message_stop")


def error_event(error: UpstreamError) -> bytes:
    """The event that ends a stream the upstream broke (status 200 was already sent)."""
    body = {
        "type": anthropic_error_type(error.status),
        "message": f"the upstream stream broke ({error.kind}): {error.message}",
        "code": error.kind,
    }
    return event("error", {"type": "error", "error": body})


@dataclass
class MessageStreamEncoder:
    """Writes one streamed answer as Anthropic events (a `streaming.StreamEncoder`).

    `prompt_token_bound` and `max_tokens` are the call's reservation: when the upstream
    reports no usage, the usage shown is what the call is charged at, the conservative count
    of CORE-003 "Streaming", as in the ledger.
    """

    message_id: str
    model: str
    stop_sequences: Sequence[str]
    prompt_token_bound: int
    max_tokens: int
    stop_sequence: str | None = None
    """The stop sequence the upstream said it stopped on, if it did."""
    _started: bool = False
    _open: tuple[str, int] | None = None
    """The block being written: ("text", -1) or ("tool", its tool call's index)."""
    _blocks: int = 0
    _tool_blocks: dict[int, int] = field(default_factory=dict)
    """Each tool call's index → its content block's index."""

    def chunk(self, chunk: dict[str, Any], answer: StreamedAnswer) -> bytes:
        events = [self._start()]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                events.append(self._text(text))
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    events.append(self._tool_call(call))
            self.stop_sequence = matched_stop(choice, self.stop_sequences) or self.stop_sequence
        return b"".join(events)

    def finished(self, answer: StreamedAnswer) -> bytes:
        usage = self.usage(answer)
        return (
            self._start()
            + self._close()
            + _ending(
                stop_reason(answer.finish_reason, self.stop_sequence),
                self.stop_sequence,
                {"input_tokens": usage[0], "output_tokens": usage[1]},
            )
        )

    def broken(self, error: UpstreamError) -> bytes:
        return error_event(error)

    def usage(self, answer: StreamedAnswer) -> tuple[int, int]:
        """The upstream's (input, output) tokens, else what the call is charged at."""
        if answer.usage is not None:
            return answer.usage
        return (
            self.prompt_token_bound,
            estimated_completion_tokens(answer.streamed, self.max_tokens),
        )

    def message(self, answer: StreamedAnswer) -> dict[str, Any]:
        """The whole answer as the Message a call that was not streamed gets (the
        transcript's record of it)."""
        completion = answer.completion(self.model)
        if self.stop_sequence is not None:
            completion["choices"][0]["stop_reason"] = self.stop_sequence
        return anthropic_message(
            completion,
            message_id=self.message_id,
            model=self.model,
            stop_sequences=self.stop_sequences,
            usage=self.usage(answer),
        )

    # ------------------------------------------------------------------ blocks

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return _message_start(self.message_id, self.model)

    def _text(self, text: str) -> bytes:
        opening = b""
        if self._open != ("text", -1):
            opening = self._open_block(("text", -1), {"type": "text", "text": ""})
        delta = {"type": "text_delta", "text": text}
        return opening + _typed("content_block_delta", index=self._blocks - 1, delta=delta)

    def _tool_call(self, call: Mapping[str, Any]) -> bytes:
        """One tool-call fragment: a new call opens a tool_use block; its arguments follow
        as input_json_delta, to the block of the call they belong to."""
        position = int(call.get("index", 0))
        function = call.get("function") or {}
        opening = b""
        if position not in self._tool_blocks:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or "",
                "name": function.get("name") or "",
                "input": {},
            }
            opening = self._open_block(("tool", position), block)
            self._tool_blocks[position] = self._blocks - 1
        arguments = function.get("arguments")
        if not isinstance(arguments, str) or not arguments:
            return opening
        delta = {"type": "input_json_delta", "partial_json": arguments}
        index = self._tool_blocks[position]
        return opening + _typed("content_block_delta", index=index, delta=delta)

    def _open_block(self, which: tuple[str, int], block: Mapping[str, Any]) -> bytes:
        closing = self._close()
        self._open = which
        self._blocks += 1
        return closing + _typed("content_block_start", index=self._blocks - 1, content_block=block)

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _typed("content_block_stop", index=self._blocks - 1)


def replay_events(message: Mapping[str, Any]) -> bytes:
    """A recorded Message as the events a live stream sends: each block whole, in one
    delta (text, or a tool call's input as JSON), then its stop reason and usage."""
    events = [_message_start(str(message.get("id", "")), str(message.get("model", "")))]
    for index, block in enumerate(message.get("content") or []):
        start: dict[str, Any]
        if block.get("type") == "tool_use":
            start = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block.get("input"))}
        else:
            start = {**block, "text": ""}
            delta = {"type": "text_delta", "text": block.get("text", "")}
        events += [
            _typed("content_block_start", index=index, content_block=start),
            _typed("content_block_delta", index=index, delta=delta),
            _typed("content_block_stop", index=index),
        ]
    usage = message.get("usage") or {"input_tokens": 0, "output_tokens": 0}
    events.append(
        _ending(str(message.get("stop_reason")), message.get("stop_sequence"), usage),
    )
    return b"".join(events)

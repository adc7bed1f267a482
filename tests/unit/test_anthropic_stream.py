"""Anthropic Messages answers in the gateway: a chat answer as a Message (every stop reason),
a stream of chat chunks as Anthropic's events, a broken stream's error event, and a recorded
Message replayed as events (specs/CORE-003, "Anthropic Messages"). The events are read back
with the official `anthropic` SDK's own accumulator, so the wire format is the one its
clients parse."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent

from smartspec.gateway.anthropic_stream import MessageStreamEncoder, error_event, replay_events
from smartspec.gateway.anthropic_translation import (
    anthropic_message,
    matched_stop,
    stop_reason,
    tool_input,
)
from smartspec.gateway.router import UpstreamError
from smartspec.gateway.streaming import StreamedAnswer
from smartspec.logic.spending import Streamed, estimated_completion_tokens

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def chunk(delta: dict[str, Any], finish_reason: str | None = None, **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "served-by",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, **choice}],
    }


USAGE_CHUNK = {**chunk({}), "choices": [], "usage": USAGE}
TEXT = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "héllo"}),
    chunk({"content": " world"}),
    chunk({}, "stop"),
    USAGE_CHUNK,
]
TOOL_CALL = [
    chunk({"role": "assistant", "content": "Running."}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "run_tests", "arguments": ""},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"pa'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'th": "t"}'}}]}),
    chunk({}, "tool_calls"),
    USAGE_CHUNK,
]


def encoder(**options: Any) -> MessageStreamEncoder:
    settings: dict[str, Any] = {
        "message_id": "msg_1",
        "model": "stub-model",
        "stop_sequences": (),
        "prompt_token_bound": 40,
        "max_tokens": 64,
        **options,
    }
    return MessageStreamEncoder(**settings)


def streamed(chunks: list[dict[str, Any]], writer: MessageStreamEncoder) -> tuple[bytes, Any]:
    """The events for a whole stream, as the relay writes them, and the answer counted."""
    answer = StreamedAnswer()
    events = b""
    for item in chunks:
        answer.add(item)
        events += writer.chunk(item, answer)
    return events + writer.finished(answer), answer


def parsed(events: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Each event's name and data; the name always equals the data's type."""
    result = []
    for block in events.decode().split("\n\n"):
        if block:
            name_line, data_line = block.split("\n")
            name = name_line.removeprefix("event: ")
            data = json.loads(data_line.removeprefix("data: "))
            assert data["type"] == name
            result.append((name, data))
    return result


def accumulated(events: bytes) -> Message:
    """The Message the anthropic SDK builds from these events."""
    snapshot = None
    for _, data in parsed(events):
        event: RawMessageStreamEvent = data  # type: ignore[assignment]  # the SDK parses dicts
        snapshot = accumulate_event(event=event, current_snapshot=snapshot)
    assert snapshot is not None
    return Message.model_validate(snapshot.model_dump())


# ------------------------------------------------------------------ stop reasons


@pytest.mark.parametrize(
    ("finish_reason", "stop_sequence", "expected"),
    [
        ("stop", None, "end_turn"),
        ("length", None, "max_tokens"),
        ("tool_calls", None, "tool_use"),
        ("function_call", None, "tool_use"),
        ("content_filter", None, "refusal"),
        ("something_new", None, "end_turn"),
        (None, None, "end_turn"),
        ("stop", "END", "stop_sequence"),
    ],
)
def test_every_finish_reason_has_a_stop_reason(
    finish_reason: str | None, stop_sequence: str | None, expected: str
) -> None:
    assert stop_reason(finish_reason, stop_sequence) == expected


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"finish_reason": "stop", "stop_reason": "END"}, "END"),
        ({"finish_reason": "stop", "provider_specific_fields": {"stop_reason": "END"}}, "END"),
        ({"finish_reason": "stop", "stop_reason": "OTHER"}, None),
        ({"finish_reason": "stop", "stop_reason": 128_001}, None),  # vLLM: a stop token's id
        ({"finish_reason": "stop"}, None),
    ],
)
def test_a_stop_sequence_is_named_only_when_the_upstream_names_one_asked_for(
    choice: dict[str, Any], expected: str | None
) -> None:
    assert matched_stop(choice, ["END", "STOP"]) == expected


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"path": "t"}', {"path": "t"}),
        ({"path": "t"}, {"path": "t"}),
        ('{"path": "t', {}),  # cut by max_tokens
        ("[1, 2]", {}),
        ("", {}),
        (None, {}),
    ],
)
def test_a_tool_calls_input_is_the_object_its_arguments_hold(
    arguments: object, expected: dict[str, Any]
) -> None:
    assert tool_input(arguments) == expected


# ------------------------------------------------------------------ answers


def completion(message: dict[str, Any], finish_reason: str, **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, **choice}],
        "usage": USAGE,
    }


def test_a_chat_answer_becomes_a_message() -> None:
    answer = completion({"role": "assistant", "content": "hello"}, "stop")
    message = anthropic_message(
        answer, message_id="msg_1", model="stub-model", stop_sequences=(), usage=(7, 3)
    )
    assert message == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "stub-model",
        "content": [{"type": "text", "text": "hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 7, "output_tokens": 3},
    }
    Message.model_validate(message)  # the SDK's own type takes it


def test_tool_calls_become_tool_use_blocks_after_the_text() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "run_tests", "arguments": '{"path": "t"}'},
    }
    answer = completion(
        {"role": "assistant", "content": "Running.", "tool_calls": [call]}, "tool_calls"
    )
    message = anthropic_message(
        answer, message_id="m", model="stub-model", stop_sequences=(), usage=(1, 1)
    )
    assert message["content"] == [
        {"type": "text", "text": "Running."},
        {"type": "tool_use", "id": "call_1", "name": "run_tests", "input": {"path": "t"}},
    ]
    assert message["stop_reason"] == "tool_use"


def test_an_answer_that_hit_a_stop_sequence_says_which() -> None:
    answer = completion({"role": "assistant", "content": "a"}, "stop", stop_reason="END")
    message = anthropic_message(
        answer, message_id="m", model="stub-model", stop_sequences=("END",), usage=(1, 1)
    )
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")


def test_an_empty_answer_has_no_blocks_and_reasoning_is_not_shown() -> None:
    answer = completion({"role": "assistant", "content": "", "reasoning_content": "hmm"}, "stop")
    message = anthropic_message(
        answer, message_id="m", model="stub-model", stop_sequences=(), usage=(1, 1)
    )
    assert message["content"] == []


# ------------------------------------------------------------------ streams


def test_a_text_stream_is_written_in_anthropics_events_in_order() -> None:
    events, _ = streamed(TEXT, encoder())
    assert [name for name, _ in parsed(events)] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    delta = dict(parsed(events))["message_delta"]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == {"input_tokens": 7, "output_tokens": 3}, "the upstream's usage"


def test_the_sdk_accumulates_a_stream_into_the_message_the_transcript_keeps() -> None:
    for chunks in (TEXT, TOOL_CALL):
        writer = encoder()
        events, answer = streamed(chunks, writer)
        recorded = writer.message(answer)
        assert accumulated(events).model_dump(exclude_none=True) == Message.model_validate(
            recorded
        ).model_dump(exclude_none=True)


def test_a_tool_call_stream_opens_a_tool_use_block_with_its_arguments_as_json_deltas() -> None:
    writer = encoder()
    events, answer = streamed(TOOL_CALL, writer)
    names = [(name, data.get("index")) for name, data in parsed(events)]
    assert names[:4] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
    ]
    starts = [data for name, data in parsed(events) if name == "content_block_start"]
    assert starts[1]["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "run_tests",
        "input": {},
    }
    message = accumulated(events)
    assert message.stop_reason == "tool_use"
    assert message.content[1].input == {"path": "t"}  # type: ignore[union-attr]
    assert answer.streamed == Streamed(len("Running.") + len("run_tests") + 13, 4)


def test_a_stream_that_hit_a_stop_sequence_says_which() -> None:
    chunks = [*TEXT[:3], chunk({}, "stop", stop_reason="END"), USAGE_CHUNK]
    writer = encoder(stop_sequences=("END",))
    message = accumulated(streamed(chunks, writer)[0])
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")


def test_a_stream_without_usage_shows_what_it_is_charged_at() -> None:
    writer = encoder(prompt_token_bound=40, max_tokens=8)
    events, answer = streamed(TEXT[:-1], writer)
    assert answer.usage is None
    output = estimated_completion_tokens(answer.streamed, 8)
    assert output == 8, "11 bytes delivered, max_tokens 8"
    assert accumulated(events).usage.model_dump(exclude_none=True) == {
        "input_tokens": 40,
        "output_tokens": output,
    }


def test_a_broken_stream_ends_with_an_anthropic_error_event() -> None:
    writer = encoder()
    answer = StreamedAnswer()
    answer.add(TEXT[1])
    head = writer.chunk(TEXT[1], answer)
    ending = writer.broken(UpstreamError("stream_broken", 502, "connection reset"))
    assert ending == error_event(UpstreamError("stream_broken", 502, "connection reset"))
    name, data = parsed(ending)[0]
    assert name == "error"
    assert data["error"]["type"] == "api_error"
    assert data["error"]["code"] == "stream_broken"
    assert b"message_stop" not in head + ending


def test_a_recorded_message_replays_as_the_same_message() -> None:
    for chunks in (TEXT, TOOL_CALL):
        writer = encoder()
        events, answer = streamed(chunks, writer)
        recorded = writer.message(answer)
        replayed = replay_events(recorded)
        assert accumulated(replayed) == accumulated(events)
        assert parsed(replayed)[0][0] == "message_start"

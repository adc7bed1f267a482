"""Which answers report token usage the gateway can charge by, and what the prompt bound
reserved before the call counts (CORE-003, "Budget accounting")."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from smartspec.gateway.chat_request import prompt_token_bound
from smartspec.gateway.router import Completion, UpstreamError, _call


def completion_of(answer: dict[str, Any]) -> Completion:
    async def upstream() -> dict[str, Any]:
        return answer

    return asyncio.run(_call(upstream(), "stub-model"))


def answer(usage: object) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}}
    return {"id": "x", "model": "served", "choices": [choice], "usage": usage}


def test_reported_counts_are_charged_by() -> None:
    result = completion_of(answer({"prompt_tokens": 12, "completion_tokens": 0}))
    assert (result.prompt_tokens, result.completion_tokens) == (12, 0)
    assert result.usage_reported
    assert result.served_by == "served"


@pytest.mark.parametrize(
    "usage",
    [
        None,
        "12 tokens",
        {},
        {"prompt_tokens": 12},
        {"prompt_tokens": 0, "completion_tokens": 0},  # what litellm fills in for none
        {"prompt_tokens": -1, "completion_tokens": 5},
        {"prompt_tokens": 12, "completion_tokens": -5},
        {"prompt_tokens": "12", "completion_tokens": 5},
        {"prompt_tokens": 12.5, "completion_tokens": 5},
        {"prompt_tokens": True, "completion_tokens": 5},
    ],
)
def test_missing_or_unusable_counts_are_not_taken_as_zero(usage: object) -> None:
    result = completion_of(answer(usage))
    assert not result.usage_reported


def test_an_answer_without_choices_is_a_malformed_answer() -> None:
    with pytest.raises(UpstreamError) as raised:
        completion_of({"id": "x", "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    assert (raised.value.kind, raised.value.status) == ("malformed_answer", 502)


def test_the_prompt_bound_covers_tool_calls_and_the_ids_tool_answers_name() -> None:
    """The worst case reserved covers every byte sent: an assistant turn that only called a
    tool (content null) was bounded as if it were empty."""
    call = {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "x" * 600}}
    plain = {"messages": [{"role": "assistant", "content": None}]}
    with_call = {"messages": [{"role": "assistant", "content": None, "tool_calls": [call]}]}
    answered = {"messages": [{"role": "tool", "tool_call_id": "call_1", "content": None}]}
    assert prompt_token_bound(with_call) - prompt_token_bound(plain) > 600
    assert prompt_token_bound(answered) - prompt_token_bound(plain) == len("call_1")

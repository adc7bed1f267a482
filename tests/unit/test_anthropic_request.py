"""Anthropic Messages requests in the gateway: what is accepted, what is refused (naming the
field, in Anthropic's error shape), and the chat request each accepted one becomes
(specs/CORE-003, "Anthropic Messages")."""

from __future__ import annotations

from typing import Any

import pytest

from smartspec.gateway.anthropic_request import validate_messages_request
from smartspec.gateway.anthropic_translation import chat_body
from smartspec.gateway.chat_request import prompt_token_bound
from smartspec.gateway.errors import (
    ANTHROPIC_ERROR_TYPES,
    GatewayError,
    anthropic_error_type,
)
from smartspec.gateway.errors import refused as refused_call
from smartspec.logic.refusals import Constraint, Refusal, RefusalCode

SERVED = frozenset({"stub-model"})
USER = {"role": "user", "content": "Write a to-do API."}
MINIMAL: dict[str, Any] = {"model": "stub-model", "max_tokens": 64, "messages": [USER]}
TOOL = {
    "name": "run_tests",
    "description": "Run the tests",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
}


def refused(body: dict[str, Any]) -> GatewayError:
    with pytest.raises(GatewayError) as raised:
        validate_messages_request(body, SERVED)
    return raised.value


# ------------------------------------------------------------------ accepted


def test_a_minimal_request_is_accepted_and_becomes_a_chat_request() -> None:
    asked = validate_messages_request(MINIMAL, SERVED)
    assert (asked.model, asked.max_tokens, asked.stream, asked.stop_sequences) == (
        "stub-model",
        64,
        False,
        (),
    )
    chat = asked.chat_request()
    assert chat.body == {"model": "stub-model", "messages": [USER], "max_tokens": 64}
    assert chat.max_tokens == 64
    assert chat.prompt_token_bound == prompt_token_bound(chat.body)


def test_every_accepted_field_is_translated() -> None:
    body = {
        **MINIMAL,
        "system": [{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop_sequences": ["END"],
        "stream": True,
        "metadata": {"user_id": "builder-1"},
        "tools": [TOOL],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    }
    asked = validate_messages_request(body, SERVED)
    assert (asked.stream, asked.stop_sequences) == (True, ("END",))
    assert chat_body(body) == {
        "model": "stub-model",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be terse."}]},
            USER,
        ],
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stream": True,
        "stop": ["END"],
        "user": "builder-1",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "run_tests",
                    "parameters": TOOL["input_schema"],
                    "description": "Run the tests",
                },
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
    }
    upstream = asked.chat_request().upstream(32)
    assert upstream["max_tokens"] == 32
    assert upstream["stream_options"] == {"include_usage": True}, "the upstream is asked for usage"


def test_a_tool_conversation_becomes_tool_calls_and_tool_messages() -> None:
    body = {
        **MINIMAL,
        "tools": [TOOL],
        "messages": [
            USER,
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Running them."},
                    {"type": "tool_use", "id": "call_1", "name": "run_tests", "input": {"p": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "2 failed"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_2",
                        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                        "is_error": True,
                    },
                    {"type": "text", "text": "Fix them."},
                ],
            },
        ],
    }
    validate_messages_request(body, SERVED)
    assert chat_body(body)["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Running them.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "run_tests", "arguments": '{"p":1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "2 failed"},
        {
            "role": "tool",
            "tool_call_id": "call_2",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        },
        {"role": "user", "content": [{"type": "text", "text": "Fix them."}]},
    ]


def test_a_tool_call_counts_in_the_prompt_bound() -> None:
    """The reservation covers the tool calls an assistant turn carries, not only its text."""
    calls = {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "c", "name": "run", "input": {"x": "y" * 500}}],
    }
    with_call = chat_body({**MINIMAL, "messages": [USER, calls]})
    assert with_call["messages"][1]["content"] is None
    assert prompt_token_bound(with_call) > 500


@pytest.mark.parametrize(
    ("choice", "translated"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "run_tests"},
            {"tool_choice": {"type": "function", "function": {"name": "run_tests"}}},
        ),
        (
            {"type": "any", "disable_parallel_tool_use": False},
            {"tool_choice": "required", "parallel_tool_calls": True},
        ),
    ],
)
def test_tool_choice_is_translated(choice: dict[str, Any], translated: dict[str, Any]) -> None:
    body = {**MINIMAL, "tools": [TOOL], "tool_choice": choice}
    validate_messages_request(body, SERVED)
    chat = chat_body(body)
    assert {key: chat[key] for key in translated} == translated
    assert ("parallel_tool_calls" in chat) == ("parallel_tool_calls" in translated)


def test_null_is_an_absent_field() -> None:
    body = {**MINIMAL, "system": None, "temperature": None, "metadata": {"user_id": None}}
    asked = validate_messages_request(body, SERVED)
    assert asked.chat_request().body == {
        "model": "stub-model",
        "messages": [USER],
        "max_tokens": 64,
    }


def test_blocks_sent_back_as_the_sdk_dumps_them_are_accepted() -> None:
    """`model_dump()` of an answer's blocks writes their unset fields as null."""
    text = {"type": "text", "text": "Done.", "citations": None}
    use: dict[str, Any] = {"type": "tool_use", "id": "c", "name": "n", "input": {}, "caller": None}
    body = {**MINIMAL, "messages": [USER, {"role": "assistant", "content": [text, use]}]}
    validate_messages_request(body, SERVED)
    assert chat_body(body)["messages"][1]["content"] == "Done."


def test_a_null_field_is_absent_whatever_its_name() -> None:
    asked = validate_messages_request({**MINIMAL, "thinking": None}, SERVED)
    assert "thinking" not in asked.chat_request().body


# ------------------------------------------------------------------ refused


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({**MINIMAL, "thinking": {"type": "enabled"}}, "thinking", "unsupported_parameter"),
        ({**MINIMAL, "service_tier": "auto"}, "service_tier", "unsupported_parameter"),
        ({**MINIMAL, "mcp_servers": []}, "mcp_servers", "unsupported_parameter"),
        ({"model": "stub-model", "messages": [USER]}, "max_tokens", "invalid_request"),
        ({"max_tokens": 64, "messages": [USER]}, "model", "invalid_request"),
        ({"model": "stub-model", "max_tokens": 64}, "messages", "invalid_request"),
        ({**MINIMAL, "messages": []}, "messages", "invalid_request"),
        ({**MINIMAL, "messages": "hi"}, "messages", "invalid_request"),
        ({**MINIMAL, "messages": ["hi"]}, "messages[0]", "invalid_request"),
        ({**MINIMAL, "max_tokens": 0}, "max_tokens", "invalid_request"),
        ({**MINIMAL, "max_tokens": 64.0}, "max_tokens", "invalid_request"),
        ({**MINIMAL, "max_tokens": True}, "max_tokens", "invalid_request"),
        ({**MINIMAL, "max_tokens": "64"}, "max_tokens", "invalid_request"),
        ({**MINIMAL, "model": 7}, "model", "invalid_request"),
        ({**MINIMAL, "temperature": "hot"}, "temperature", "invalid_request"),
        ({**MINIMAL, "temperature": float("nan")}, "temperature", "invalid_request"),
        ({**MINIMAL, "top_p": True}, "top_p", "invalid_request"),
        ({**MINIMAL, "top_k": 1.5}, "top_k", "invalid_request"),
        ({**MINIMAL, "top_k": -1}, "top_k", "invalid_request"),
        ({**MINIMAL, "stop_sequences": "END"}, "stop_sequences", "invalid_request"),
        ({**MINIMAL, "stop_sequences": ["END", 3]}, "stop_sequences[1]", "invalid_request"),
        ({**MINIMAL, "stream": "yes"}, "stream", "invalid_request"),
        ({**MINIMAL, "metadata": "me"}, "metadata", "invalid_request"),
        ({**MINIMAL, "metadata": {"user_id": 7}}, "metadata.user_id", "invalid_request"),
        ({**MINIMAL, "metadata": {"team": "a"}}, "metadata.team", "unsupported_parameter"),
        ({**MINIMAL, "system": 7}, "system", "invalid_request"),
        ({**MINIMAL, "system": [{"type": "image"}]}, "system[0].type", "unsupported_content"),
        ({**MINIMAL, "system": [{"type": "text"}]}, "system[0].text", "invalid_request"),
        (
            {**MINIMAL, "messages": [{"role": "system", "content": "x"}]},
            "messages[0].role",
            "invalid_request",
        ),
        ({**MINIMAL, "messages": [{"role": "user"}]}, "messages[0].content", "invalid_request"),
        (
            {**MINIMAL, "messages": [{"role": "user", "content": 7}]},
            "messages[0].content",
            "invalid_request",
        ),
        (
            {**MINIMAL, "messages": [{**USER, "name": "me"}]},
            "messages[0].name",
            "unsupported_parameter",
        ),
        (
            {**MINIMAL, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
            "messages[0].content[0].type",
            "unsupported_content",
        ),
        (
            {**MINIMAL, "messages": [{"role": "user", "content": [{"text": "no type"}]}]},
            "messages[0].content[0]",
            "invalid_request",
        ),
        (
            {
                **MINIMAL,
                "messages": [
                    {"role": "user", "content": [{"type": "tool_use", "id": "c", "name": "n"}]}
                ],
            },
            "messages[0].content[0].type",
            "unsupported_content",
        ),
        (
            {
                **MINIMAL,
                "messages": [{"role": "assistant", "content": [{"type": "thinking"}]}],
            },
            "messages[0].content[0].type",
            "unsupported_content",
        ),
        (
            {
                **MINIMAL,
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "x", "extra": 1}]}
                ],
            },
            "messages[0].content[0].extra",
            "unsupported_parameter",
        ),
        (
            {
                **MINIMAL,
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "text", "text": "x", "citations": []}],
                    }
                ],
            },
            "messages[0].content[0].citations",
            "unsupported_parameter",
        ),
        (
            {
                **MINIMAL,
                "messages": [{"role": "user", "content": [{"type": "text", "text": 7}]}],
            },
            "messages[0].content[0].text",
            "invalid_request",
        ),
        (
            {
                **MINIMAL,
                "messages": [{"role": "user", "content": [{"type": "tool_result"}]}],
            },
            "messages[0].content[0].tool_use_id",
            "invalid_request",
        ),
        (
            {
                **MINIMAL,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "c", "content": 3}],
                    }
                ],
            },
            "messages[0].content[0].content",
            "invalid_request",
        ),
        (
            {
                **MINIMAL,
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "c", "name": "n", "input": "x"}],
                    }
                ],
            },
            "messages[0].content[0].input",
            "invalid_request",
        ),
        ({**MINIMAL, "tools": {"name": "x"}}, "tools", "invalid_request"),
        (
            {**MINIMAL, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "tools[0].type",
            "unsupported_tool",
        ),
        ({**MINIMAL, "tools": [{"name": "x"}]}, "tools[0].input_schema", "invalid_request"),
        (
            {**MINIMAL, "tools": [{**TOOL, "input_schema": "object"}]},
            "tools[0].input_schema",
            "invalid_request",
        ),
        ({**MINIMAL, "tools": [{**TOOL, "name": ""}]}, "tools[0].name", "invalid_request"),
        (
            {**MINIMAL, "tools": [{**TOOL, "cache_control": "ephemeral"}]},
            "tools[0].cache_control",
            "invalid_request",
        ),
        ({**MINIMAL, "tool_choice": {"type": "auto"}}, "tool_choice", "invalid_request"),
        (
            {**MINIMAL, "tools": [TOOL], "tool_choice": {"type": "maybe"}},
            "tool_choice.type",
            "invalid_request",
        ),
        (
            {**MINIMAL, "tools": [TOOL], "tool_choice": {"type": "tool"}},
            "tool_choice.name",
            "invalid_request",
        ),
        (
            {**MINIMAL, "tools": [TOOL], "tool_choice": "auto"},
            "tool_choice",
            "invalid_request",
        ),
    ],
)
def test_a_wrong_field_is_refused_naming_it(body: dict[str, Any], param: str, code: str) -> None:
    error = refused(body)
    assert (error.status, error.code, error.extra["param"]) == (400, code, param)
    assert param in str(error), "the message names the field too"
    answer = error.anthropic_body()
    assert answer["type"] == "error"
    assert answer["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_a_model_not_served_is_not_found() -> None:
    error = refused({**MINIMAL, "model": "gpt-99"})
    assert (error.status, error.code) == (404, "model_not_found")
    assert error.anthropic_body()["error"]["type"] == "not_found_error"  # type: ignore[index]


# ------------------------------------------------------------------ the error shape


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
    ],
)
def test_each_status_has_anthropics_error_type(status: int, error_type: str) -> None:
    assert anthropic_error_type(status) == error_type
    assert set(ANTHROPIC_ERROR_TYPES.values()) <= {
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "timeout_error",
        "overloaded_error",
        "api_error",
    }, "every type is one the Anthropic SDK knows"


@pytest.mark.parametrize(
    ("code", "constraint", "error_type"),
    [
        (RefusalCode.BUDGET_EXHAUSTED, Constraint.BUDGET_REMAINING, "billing_error"),
        (RefusalCode.RUN_CAP_REACHED, Constraint.RUN_CAP, "billing_error"),
        (RefusalCode.BUDGET_NOT_FOUND, Constraint.BUDGET_MISSING, "billing_error"),
        (RefusalCode.MODEL_NOT_ALLOWED, Constraint.MODEL_POLICY, "permission_error"),
    ],
)
def test_a_refusal_keeps_its_code_and_figures_in_anthropics_shape(
    code: RefusalCode, constraint: Constraint, error_type: str
) -> None:
    refusal = Refusal(code, constraint, "no room", {"remaining_credits": 3, "required_credits": 9})
    assert refused_call(refusal).anthropic_body() == {
        "type": "error",
        "error": {
            "type": error_type,
            "message": "no room",
            "code": code.value,
            "constraint": constraint.value,
            "remaining_credits": 3,
            "required_credits": 9,
        },
    }

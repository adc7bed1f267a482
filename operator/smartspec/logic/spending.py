"""One model call's credits, in integers: what it needs, what it is granted, what it is charged.

Contract: specs/CORE-003-gateway-and-budgets.md, sections "Budget accounting" and "Refusals".

Before a provider is called, the call's worst case (a bound of its prompt's tokens and the
max_tokens it asks for) is held against the budget; when less is left, max_tokens is
clamped to what is left, down to a smallest useful completion, and below that the call is
refused. After the call it is charged what its answer reports, or, when the answer reports
no usable token counts, the worst case that was held: tokens were spent, and an unknown
amount is never charged 0. A streamed answer without usable counts (it ended without them,
broke, or its client left) is charged a conservative count of what it delivered instead
(`charge_for_stream`). The gateway's `spending` module does the I/O around these.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from smartspec.logic.pricing import ModelPrice, affordable_completion_tokens, cost_credits
from smartspec.logic.refusals import CallNeed

MIN_USEFUL_COMPLETION_TOKENS = 16
"""A call clamped below this many completion tokens is not worth making: it is refused."""


def call_need(price: ModelPrice, prompt_token_bound: int, max_tokens: int) -> CallNeed:
    """The worst case at the max_tokens asked for, and at the smallest useful completion."""
    smallest = min(max_tokens, MIN_USEFUL_COMPLETION_TOKENS)
    return CallNeed(
        requested_credits=cost_credits(price, prompt_token_bound, max_tokens),
        required_credits=cost_credits(price, prompt_token_bound, smallest),
        min_completion_tokens=smallest,
        prompt_token_bound=prompt_token_bound,
    )


@dataclass(frozen=True)
class Grant:
    """Credits to hold for one call and the max_tokens to send upstream with them."""

    credits: int
    max_tokens: int


def grant_within(price: ModelPrice, need: CallNeed, max_tokens: int, room: int) -> Grant | None:
    """The whole worst case when `room` covers it, else max_tokens clamped to what `room`
    covers; None when not even the smallest useful completion fits (the call is refused)."""
    if room >= need.requested_credits:
        return Grant(need.requested_credits, max_tokens)
    affordable = min(max_tokens, affordable_completion_tokens(price, need.prompt_token_bound, room))
    if affordable < need.min_completion_tokens:
        return None
    return Grant(cost_credits(price, need.prompt_token_bound, affordable), affordable)


class SettledBy(StrEnum):
    """What a call's charge was computed from: the `settled_by` of its settle entry."""

    USAGE = "usage"
    """The prompt and completion tokens the answer reports."""
    RESERVATION = "reservation"
    """The worst case held before the call: the answer's counts are missing or unusable."""
    ESTIMATE_NO_USAGE = "estimate_no_usage"
    """A stream that finished without usable counts: the conservative count."""
    ESTIMATE_UPSTREAM_BROKE = "estimate_upstream_broke"
    """A stream that broke upstream before its usage arrived: the conservative count."""
    ESTIMATE_CLIENT_GONE = "estimate_client_gone"
    """A stream whose client left (the upstream request was cancelled): the conservative
    count."""


class StreamEnd(StrEnum):
    """How a streamed answer ended."""

    FINISHED = "finished"
    """The upstream sent a finish reason and ended."""
    UPSTREAM_BROKE = "upstream_broke"
    """The upstream failed, or ended before a finish reason."""
    CLIENT_GONE = "client_gone"
    """The client went away (or the gateway stopped) mid-stream."""


_ESTIMATED_BY = {
    StreamEnd.FINISHED: SettledBy.ESTIMATE_NO_USAGE,
    StreamEnd.UPSTREAM_BROKE: SettledBy.ESTIMATE_UPSTREAM_BROKE,
    StreamEnd.CLIENT_GONE: SettledBy.ESTIMATE_CLIENT_GONE,
}


@dataclass(frozen=True)
class Streamed:
    """What a streamed answer delivered: UTF-8 bytes of generated text (content, reasoning,
    tool-call names and arguments) and the chunks that carried any of it."""

    generated_bytes: int = 0
    generated_chunks: int = 0


@dataclass(frozen=True)
class Charge:
    """What one finished call costs, the tokens recorded for it, and what they came from."""

    credits: int
    prompt_tokens: int
    completion_tokens: int
    settled_by: SettledBy


def charge_for(
    price: ModelPrice, held: Grant, prompt_token_bound: int, usage: tuple[int, int] | None
) -> Charge:
    """The reported (prompt, completion) tokens at the call's price, or, when `usage` is
    None, what was held, with the bounds it was priced at as the tokens."""
    if usage is None:
        return Charge(held.credits, prompt_token_bound, held.max_tokens, SettledBy.RESERVATION)
    return _usage_charge(price, usage)


def estimated_completion_tokens(streamed: Streamed, max_tokens: int) -> int:
    """A count of completion tokens that is never below what a stream delivered.

    A byte-level BPE tokenizer never makes more tokens than the text has UTF-8 bytes (the
    rule the prompt's bound uses), and a chunk carries at least one token; the model never
    generates more than max_tokens. Hidden reasoning that is not streamed is not counted.
    """
    return min(max_tokens, max(streamed.generated_bytes, streamed.generated_chunks))


def charge_for_stream(
    price: ModelPrice,
    held: Grant,
    prompt_token_bound: int,
    usage: tuple[int, int] | None,
    *,
    streamed: Streamed,
    end: StreamEnd,
) -> Charge:
    """The reported tokens when the stream carried them, however it ended; else the prompt's
    bound and the conservative completion count, which is never 0 credits for a priced model
    (the prompt's bound is at least 16 tokens) and never more than was held."""
    if usage is not None:
        return _usage_charge(price, usage)
    completion_tokens = estimated_completion_tokens(streamed, held.max_tokens)
    return Charge(
        cost_credits(price, prompt_token_bound, completion_tokens),
        prompt_token_bound,
        completion_tokens,
        _ESTIMATED_BY[end],
    )


def _usage_charge(price: ModelPrice, usage: tuple[int, int]) -> Charge:
    prompt_tokens, completion_tokens = usage
    return Charge(
        cost_credits(price, prompt_tokens, completion_tokens),
        prompt_tokens,
        completion_tokens,
        SettledBy.USAGE,
    )

"""One model call's credits, in integers: what it needs, what it is granted, what it is charged.

Contract: specs/CORE-003-gateway-and-budgets.md, sections "Budget accounting" and "Refusals".

Before a provider is called, the call's worst case (a bound of its prompt's tokens and the
max_tokens it asks for) is held against the budget; when less is left, max_tokens is
clamped to what is left, down to a smallest useful completion, and below that the call is
refused. After the call it is charged what its answer reports, or, when the answer reports
no usable token counts, the worst case that was held: tokens were spent, and an unknown
amount is never charged 0. The gateway's `spending` module does the I/O around these.
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


class SettledOn(StrEnum):
    """What a call's charge was computed from (the settle entry's detail names it)."""

    USAGE = "usage"
    """The prompt and completion tokens the answer reports."""
    RESERVATION = "reservation"
    """The worst case held before the call: the answer's counts are missing or unusable."""


@dataclass(frozen=True)
class Charge:
    """What one finished call costs, the tokens recorded for it, and what they came from."""

    credits: int
    prompt_tokens: int
    completion_tokens: int
    settled_on: SettledOn


def charge_for(
    price: ModelPrice, held: Grant, prompt_token_bound: int, usage: tuple[int, int] | None
) -> Charge:
    """The reported (prompt, completion) tokens at the call's price, or, when `usage` is
    None, what was held, with the bounds it was priced at as the tokens."""
    if usage is None:
        return Charge(held.credits, prompt_token_bound, held.max_tokens, SettledOn.RESERVATION)
    prompt_tokens, completion_tokens = usage
    return Charge(
        cost_credits(price, prompt_tokens, completion_tokens),
        prompt_tokens,
        completion_tokens,
        SettledOn.USAGE,
    )

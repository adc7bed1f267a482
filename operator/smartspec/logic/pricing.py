"""Integer credit prices for model calls.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Prices".

A price is a pair of integers: credits per 1,000,000 input tokens and per 1,000,000 output
tokens. Provider prices arrive as USD per token (litellm's cost map, floats such as 1.5e-07);
they are converted once, exactly, and rounded up, so a configured price never charges less
than the provider does. Costs are then computed in integer arithmetic and also rounded up:
credits are integers everywhere (CORE-001), and no float ever touches a balance.

A model without a price is refused, never charged 0: "unpriced" must not mean "free".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from types import MappingProxyType
from typing import Any

TOKENS_PER_PRICE_UNIT = 1_000_000
"""Prices are quoted per this many tokens (one "Mtok")."""

UNBOUNDED_COMPLETION_TOKENS = 2**31 - 1
"""What `affordable_completion_tokens` returns when completion tokens cost nothing; also
the most it ever returns, so callers can pass it on as a max_tokens without overflow."""

# litellm cost-map keys (USD per token).
_INPUT_KEY = "input_cost_per_token"
_OUTPUT_KEY = "output_cost_per_token"


class UnknownModelPrice(ValueError):  # noqa: N818 - named for what it reports
    """The price table has no entry for a model."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} has no price; refusing rather than charging 0")
        self.model = model


@dataclass(frozen=True)
class ModelPrice:
    """Credits per 1,000,000 input and output tokens of one model."""

    model: str
    input_credits_per_mtok: int
    output_credits_per_mtok: int

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("a model price needs a model name")
        for field, value in (
            ("input_credits_per_mtok", self.input_credits_per_mtok),
            ("output_credits_per_mtok", self.output_credits_per_mtok),
        ):
            _require_count(value, f"{self.model}: {field}")


def price_from_usd_per_token(
    model: str,
    input_usd_per_token: float | str | Decimal,
    output_usd_per_token: float | str | Decimal,
    credits_per_usd: int,
) -> ModelPrice:
    """Convert USD-per-token prices to integer credits per Mtok, rounding up.

    Floats are read through their repr (str), so 1.5e-07 means exactly 0.00000015, not the
    binary approximation that the float holds.
    """
    _require_count(credits_per_usd, "credits_per_usd", minimum=1)
    return ModelPrice(
        model=model,
        input_credits_per_mtok=_credits_per_mtok(
            model, "input", input_usd_per_token, credits_per_usd
        ),
        output_credits_per_mtok=_credits_per_mtok(
            model, "output", output_usd_per_token, credits_per_usd
        ),
    )


def cost_credits(price: ModelPrice, prompt_tokens: int, completion_tokens: int) -> int:
    """Credits for one call: ceil((prompt * in + completion * out) / 1,000,000)."""
    _require_count(prompt_tokens, "prompt_tokens")
    _require_count(completion_tokens, "completion_tokens")
    micro = (
        prompt_tokens * price.input_credits_per_mtok
        + completion_tokens * price.output_credits_per_mtok
    )
    return -(-micro // TOKENS_PER_PRICE_UNIT)


def affordable_completion_tokens(
    price: ModelPrice, prompt_tokens: int, available_credits: int
) -> int:
    """The largest n >= 0 with cost_credits(price, prompt_tokens, n) <= available_credits.

    0 when the prompt alone costs more than is available (a negative balance included):
    either way, a call with 0 completion tokens is not worth making. Capped at
    UNBOUNDED_COMPLETION_TOKENS, which is also the answer when output tokens are free.
    """
    _require_count(prompt_tokens, "prompt_tokens")
    if isinstance(available_credits, bool) or not isinstance(available_credits, int):
        raise ValueError(f"available_credits must be an integer, got {available_credits!r}")
    # ceil(x / M) <= A  <=>  x <= A * M for integer x, so the bound is exact.
    headroom = (
        available_credits * TOKENS_PER_PRICE_UNIT - prompt_tokens * price.input_credits_per_mtok
    )
    if headroom < 0:
        return 0
    if price.output_credits_per_mtok == 0:
        return UNBOUNDED_COMPLETION_TOKENS
    return min(headroom // price.output_credits_per_mtok, UNBOUNDED_COMPLETION_TOKENS)


class PriceTable:
    """Prices by exact model name; a missing model is an error, never a zero price."""

    __slots__ = ("_prices",)

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        for name, price in prices.items():
            if name != price.model:
                raise ValueError(f"price table key {name!r} holds the price of {price.model!r}")
        self._prices: Mapping[str, ModelPrice] = MappingProxyType(dict(prices))

    def price(self, model: str) -> ModelPrice:
        """The model's price, or UnknownModelPrice."""
        try:
            return self._prices[model]
        except KeyError:
            raise UnknownModelPrice(model) from None

    @property
    def models(self) -> tuple[str, ...]:
        """The priced model names, sorted."""
        return tuple(sorted(self._prices))

    def __contains__(self, model: object) -> bool:
        return model in self._prices

    def __len__(self) -> int:
        return len(self._prices)

    def __repr__(self) -> str:
        return f"PriceTable({sorted(self._prices.values(), key=lambda p: p.model)!r})"


def build_price_table(
    cost_map: Mapping[str, Mapping[str, Any]],
    overrides: Mapping[str, tuple[int, int]],
    models: Iterable[str],
    credits_per_usd: int,
) -> PriceTable:
    """Price each of `models`: an override (credits per Mtok in, out) wins, else the cost map.

    A model with neither is left out, so looking it up raises UnknownModelPrice.
    """
    _require_count(credits_per_usd, "credits_per_usd", minimum=1)
    prices: dict[str, ModelPrice] = {}
    for model in models:
        if model in overrides:
            input_credits, output_credits = overrides[model]
            # An explicit override is the only way to make a model free: an operator wrote 0.
            prices[model] = ModelPrice(model, input_credits, output_credits)
            continue
        price = _price_from_cost_map(model, cost_map.get(model), credits_per_usd)
        if price is not None:
            prices[model] = price
    return PriceTable(prices)


def _price_from_cost_map(
    model: str, entry: Mapping[str, Any] | None, credits_per_usd: int
) -> ModelPrice | None:
    if entry is None:
        return None
    input_usd = entry.get(_INPUT_KEY)
    output_usd = entry.get(_OUTPUT_KEY)
    # Both prices must be stated. A missing one is a gap in the map, not a free
    # direction: charging 0 for it would under-charge silently.
    if input_usd is None or output_usd is None:
        return None
    price = price_from_usd_per_token(model, input_usd, output_usd, credits_per_usd)
    # The cost map writes 0.0 both for free models and for ones nobody priced yet (its own
    # sample entry is all zeros), so 0/0 is read as "no price". Free needs an override.
    if price.input_credits_per_mtok == 0 and price.output_credits_per_mtok == 0:
        return None
    return price


def _credits_per_mtok(
    model: str, direction: str, usd_per_token: object, credits_per_usd: int
) -> int:
    usd = _exact_usd(model, direction, usd_per_token)
    # Fraction keeps the product exact whatever the digits; Decimal would round at 28.
    return math.ceil(usd * TOKENS_PER_PRICE_UNIT * credits_per_usd)


def _exact_usd(model: str, direction: str, value: object) -> Fraction:
    where = f"model {model!r}: {direction} price"
    if isinstance(value, bool):
        raise ValueError(f"{where} must be a number, got {value!r}")
    try:
        if isinstance(value, Decimal):
            number = value
        elif isinstance(value, int | float | str):
            # str(float) is the shortest repr that round-trips: what the JSON said.
            number = Decimal(value.strip() if isinstance(value, str) else str(value))
        else:
            raise ValueError(f"{where} must be a number, got {type(value).__name__}")
    except InvalidOperation:
        raise ValueError(f"{where} is not a number: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"{where} must be finite, got {value!r}")
    if number < 0:
        raise ValueError(f"{where} must not be negative, got {value!r}")
    return Fraction(number)


def _require_count(value: object, name: str, minimum: int = 0) -> None:
    # bool is an int subclass; True tokens or credits is a bug, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        bound = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
        raise ValueError(f"{name} {bound}, got {value}")

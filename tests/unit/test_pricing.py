"""Integer credit prices and litellm's bundled cost map (specs/CORE-003-gateway-and-budgets.md)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from smartspec.gateway.litellm_costs import (
    BUNDLED_COST_MAP_FILE,
    litellm_cost_map_source,
    load_litellm_cost_map,
)
from smartspec.logic.pricing import (
    UNBOUNDED_COMPLETION_TOKENS,
    ModelPrice,
    PriceTable,
    UnknownModelPrice,
    affordable_completion_tokens,
    build_price_table,
    cost_credits,
    price_from_usd_per_token,
)

REPO = Path(__file__).resolve().parents[2]
MICRO_USD = 1_000_000  # credits per USD when one credit is one millionth of a dollar


# ------------------------------------------------------------------ price conversion


@pytest.mark.parametrize(
    ("input_usd", "output_usd", "credits_per_usd", "expected"),
    [
        # gpt-4o-mini's list price, in micro-dollars and in cents.
        (1.5e-07, 6e-07, MICRO_USD, (150_000, 600_000)),
        (1.5e-07, 6e-07, 100, (15, 60)),
        # The float's repr is read exactly: 1.1e-06 * 1e6 * 100 is 110.00000000000001 in
        # binary floating point, which a float ceiling would charge as 111.
        (1.1e-06, 2.9e-06, 100, (110, 290)),
        # Fractions of a credit round up, never down.
        (1e-09, 1e-12, 1, (1, 1)),
        ("0.000000123456789", Decimal("0.0000001"), 1, (1, 1)),
        ("0.000000123456789", "0.0000001", 10_000_000, (1_234_568, 1_000_000)),
        # Zero is a price (an override may say so); ints are accepted as numbers.
        (0.0, 0, MICRO_USD, (0, 0)),
        ("-0.0", 2e-06, MICRO_USD, (0, 2_000_000)),
    ],
)
def test_usd_per_token_converts_exactly_and_rounds_up(
    input_usd: float | str | Decimal,
    output_usd: float | str | Decimal,
    credits_per_usd: int,
    expected: tuple[int, int],
) -> None:
    price = price_from_usd_per_token("m", input_usd, output_usd, credits_per_usd)
    assert (price.input_credits_per_mtok, price.output_credits_per_mtok) == expected
    assert type(price.input_credits_per_mtok) is int
    assert type(price.output_credits_per_mtok) is int


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (-1e-06, "must not be negative"),
        ("-0.000001", "must not be negative"),
        (float("nan"), "must be finite"),
        (float("inf"), "must be finite"),
        ("Infinity", "must be finite"),
        (Decimal("NaN"), "must be finite"),
        ("one dollar", "is not a number"),
        ("", "is not a number"),
        (True, "must be a number"),
        (None, "must be a number"),
        ([1], "must be a number"),
    ],
)
def test_bad_usd_prices_are_refused_naming_the_model(bad: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        price_from_usd_per_token("vendor/model-x", bad, 1e-06, MICRO_USD)
    assert "vendor/model-x" in str(raised.value)
    assert "input price" in str(raised.value)
    with pytest.raises(ValueError, match="output price"):
        price_from_usd_per_token("vendor/model-x", 1e-06, bad, MICRO_USD)


@pytest.mark.parametrize("credits_per_usd", [0, -1, True, 1.0])
def test_credits_per_usd_must_be_a_positive_integer(credits_per_usd: Any) -> None:
    with pytest.raises(ValueError, match="credits_per_usd"):
        price_from_usd_per_token("m", 1e-06, 1e-06, credits_per_usd)


@pytest.mark.parametrize(
    ("model", "input_credits", "output_credits", "message"),
    [
        ("", 1, 1, "needs a model name"),
        ("m", -1, 1, "input_credits_per_mtok must not be negative"),
        ("m", 1, -1, "output_credits_per_mtok must not be negative"),
        ("m", 1.5, 1, "must be an integer"),
        ("m", 1, False, "must be an integer"),
    ],
)
def test_model_price_holds_non_negative_integers(
    model: str, input_credits: Any, output_credits: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ModelPrice(model, input_credits, output_credits)


# ------------------------------------------------------------------ costs

MINI = ModelPrice("gpt-4o-mini", 150_000, 600_000)


@pytest.mark.parametrize(
    ("price", "prompt", "completion", "expected"),
    [
        (MINI, 0, 0, 0),
        (MINI, 1, 0, 1),  # 0.15 credits rounds up to 1
        (MINI, 0, 1, 1),
        (MINI, 1_000, 500, 450),  # 150 + 300, exact
        (MINI, 1_000_000, 1_000_000, 750_000),
        (MINI, 3, 3, 3),  # 0.45 + 1.8 = 2.25 -> 3: rounded once, on the sum
        (ModelPrice("free", 0, 0), 10**9, 10**9, 0),
        (ModelPrice("big", 10**15, 10**15), 10**9, 10**9, 2 * 10**18),  # no overflow
    ],
)
def test_cost_is_the_ceiling_of_the_exact_sum(
    price: ModelPrice, prompt: int, completion: int, expected: int
) -> None:
    assert cost_credits(price, prompt, completion) == expected


@pytest.mark.parametrize(
    ("prompt", "completion", "name"),
    [(-1, 0, "prompt_tokens"), (0, -1, "completion_tokens"), (1.0, 0, "prompt_tokens")],
)
def test_cost_refuses_negative_or_non_integer_tokens(
    prompt: Any, completion: Any, name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        cost_credits(MINI, prompt, completion)


PRICES = [
    ModelPrice("a", 150_000, 600_000),
    ModelPrice("b", 1, 3),
    ModelPrice("c", 999_999, 1_000_001),
    ModelPrice("d", 0, 7),
    ModelPrice("e", 2_500_000, 10_000_000),
]


@pytest.mark.parametrize("price", PRICES, ids=lambda p: p.model)
def test_affordable_completion_tokens_is_the_largest_affordable_n(price: ModelPrice) -> None:
    for prompt in (0, 1, 7, 1_000, 123_457):
        for available in (-5, 0, 1, 2, 3, 149, 1_000, 10**6):
            n = affordable_completion_tokens(price, prompt, available)
            if cost_credits(price, prompt, 0) > available:
                assert n == 0, (prompt, available)
                continue
            assert cost_credits(price, prompt, n) <= available, (prompt, available, n)
            if n < UNBOUNDED_COMPLETION_TOKENS:
                assert cost_credits(price, prompt, n + 1) > available, (prompt, available, n)


@pytest.mark.parametrize(
    ("price", "prompt", "available", "expected"),
    [
        (ModelPrice("free-output", 1_000_000, 0), 5, 5, UNBOUNDED_COMPLETION_TOKENS),
        (ModelPrice("free-output", 1_000_000, 0), 6, 5, 0),
        (ModelPrice("free", 0, 0), 10**9, 0, UNBOUNDED_COMPLETION_TOKENS),
        (ModelPrice("cheap", 0, 1), 0, 10**12, UNBOUNDED_COMPLETION_TOKENS),  # capped
        (MINI, 1_000, 450, 500),
        (MINI, 1_000, 449, 498),
    ],
)
def test_affordable_completion_tokens_edges(
    price: ModelPrice, prompt: int, available: int, expected: int
) -> None:
    assert affordable_completion_tokens(price, prompt, available) == expected


@pytest.mark.parametrize(
    ("prompt", "available", "name"),
    [(-1, 10, "prompt_tokens"), (1, 10.0, "available_credits"), (1, True, "available_credits")],
)
def test_affordable_completion_tokens_refuses_bad_input(
    prompt: Any, available: Any, name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        affordable_completion_tokens(MINI, prompt, available)


# ------------------------------------------------------------------ price table


def test_price_table_looks_up_exact_names_and_refuses_unknown_ones() -> None:
    table = PriceTable({"gpt-4o-mini": MINI})
    assert table.price("gpt-4o-mini") is MINI
    assert "gpt-4o-mini" in table
    assert len(table) == 1
    assert table.models == ("gpt-4o-mini",)
    for unknown in ("openai/gpt-4o-mini", "GPT-4O-MINI", "gpt-4o", ""):
        assert unknown not in table
        with pytest.raises(UnknownModelPrice) as raised:
            table.price(unknown)
        assert raised.value.model == unknown
        assert str(raised.value) == (
            f"model {unknown!r} has no price; refusing rather than charging 0"
        )
        assert isinstance(raised.value, ValueError)


def test_price_table_keys_must_match_their_prices() -> None:
    with pytest.raises(ValueError, match="'alias' holds the price of 'gpt-4o-mini'"):
        PriceTable({"alias": MINI})


def test_price_table_is_not_changed_by_its_source_dict() -> None:
    source = {"gpt-4o-mini": MINI}
    table = PriceTable(source)
    source["other"] = ModelPrice("other", 1, 1)
    assert "other" not in table


COST_MAP: dict[str, dict[str, Any]] = {
    "priced": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "mode": "chat"},
    "zero": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0},
    "zero-int": {"input_cost_per_token": 0, "output_cost_per_token": 0},
    "free-input": {"input_cost_per_token": 0.0, "output_cost_per_token": 1e-06},
    "no-output": {"input_cost_per_token": 1e-06},
    "null-output": {"input_cost_per_token": 1e-06, "output_cost_per_token": None},
    "no-prices": {"max_tokens": 4096},
    "broken": {"input_cost_per_token": -1e-06, "output_cost_per_token": 1e-06},
}


@pytest.mark.parametrize(
    ("model", "overrides", "expected"),
    [
        ("priced", {}, (1_000_000, 2_000_000)),
        ("priced", {"priced": (5, 6)}, (5, 6)),  # an override wins
        ("free-input", {}, (0, 1_000_000)),  # one free direction is a real price
        ("unlisted", {"unlisted": (1, 2)}, (1, 2)),
        # Free only when an operator says so: the same 0/0 from the map means "unpriced".
        ("zero", {"zero": (0, 0)}, (0, 0)),
        ("zero", {}, None),
        ("zero-int", {}, None),
        ("no-output", {}, None),
        ("null-output", {}, None),
        ("no-prices", {}, None),
        ("unlisted", {}, None),
    ],
)
def test_build_price_table(
    model: str, overrides: dict[str, tuple[int, int]], expected: tuple[int, int] | None
) -> None:
    table = build_price_table(COST_MAP, overrides, [model], credits_per_usd=MICRO_USD)
    if expected is None:
        assert model not in table
        with pytest.raises(UnknownModelPrice):
            table.price(model)
    else:
        price = table.price(model)
        assert (price.input_credits_per_mtok, price.output_credits_per_mtok) == expected


def test_build_price_table_prices_only_the_requested_models() -> None:
    table = build_price_table(COST_MAP, {"free-input": (1, 1)}, ["priced"], MICRO_USD)
    assert table.models == ("priced",)


@pytest.mark.parametrize(
    ("overrides", "models", "message"),
    [
        ({}, ["broken"], "'broken': input price must not be negative"),
        ({"x": (-1, 0)}, ["x"], "x: input_credits_per_mtok must not be negative"),
        ({"x": (1.5, 0)}, ["x"], "x: input_credits_per_mtok must be an integer"),
    ],
)
def test_build_price_table_refuses_bad_prices_loudly(
    overrides: dict[str, tuple[Any, Any]], models: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_price_table(COST_MAP, overrides, models, MICRO_USD)


# ------------------------------------------------------------------ litellm's bundled map


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Make every connection and name lookup fail, and record the attempts."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access in a unit test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_bundled_cost_map_loads_offline_and_prices_gpt_4o_mini(no_network: list[object]) -> None:
    cost_map = load_litellm_cost_map()
    assert no_network == []
    entry = cost_map["gpt-4o-mini"]
    assert entry["input_cost_per_token"] > 0
    assert entry["output_cost_per_token"] > 0
    assert "sample_spec" not in cost_map  # litellm's all-zero template entry

    table = build_price_table(cost_map, {}, ["gpt-4o-mini", "no-such-model"], MICRO_USD)
    price = table.price("gpt-4o-mini")
    assert price.input_credits_per_mtok > 0
    assert price.output_credits_per_mtok > 0
    assert "no-such-model" not in table


def test_bundled_cost_map_source_names_version_and_digest(no_network: list[object]) -> None:
    source = litellm_cost_map_source()
    assert source.startswith("litellm ")
    assert f" {BUNDLED_COST_MAP_FILE} sha256:" in source
    assert no_network == []


def test_loading_the_cost_map_neither_imports_litellm_nor_touches_the_network() -> None:
    # A fresh interpreter: in this one another test may have imported litellm already.
    script = textwrap.dedent(
        """
        import json, socket, sys
        attempts = []
        def refuse(*args, **kwargs):
            attempts.append(repr(args))
            raise OSError("network access")
        socket.socket.connect = refuse
        socket.getaddrinfo = refuse
        from smartspec.gateway.litellm_costs import load_litellm_cost_map
        cost_map = load_litellm_cost_map()
        print(json.dumps({
            "attempts": attempts,
            "litellm_imported": "litellm" in sys.modules,
            "gpt-4o-mini": cost_map["gpt-4o-mini"]["input_cost_per_token"] > 0,
        }))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO / "operator")},
    )
    assert json.loads(completed.stdout) == {
        "attempts": [],
        "litellm_imported": False,
        "gpt-4o-mini": True,
    }

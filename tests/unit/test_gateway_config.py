"""The gateway configuration file: specs/CORE-003-gateway-and-budgets.md, "Routing"."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from smartspec.gateway.config import ConfigError, GatewayConfig, load_gateway_config
from smartspec.gateway.server import structured_output_models


def write(tmp_path: Path, route: dict[str, object]) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "m", **route}]}))
    return path


def test_an_openai_compatible_route_asks_for_the_model_after_the_provider(
    tmp_path: Path,
) -> None:
    route: dict[str, object] = {
        "litellmModel": "openai/meta-llama/Llama-3.1-8B",
        "apiBase": "http://vllm:8000/v1",
        "transport": "openai-compatible",
    }
    config = load_gateway_config(write(tmp_path, route))
    assert config.openai_compatible_routes == frozenset({"m"})
    assert config.models[0].upstream_model == "meta-llama/Llama-3.1-8B"


def test_routes_use_litellms_provider_unless_told(tmp_path: Path) -> None:
    config = load_gateway_config(write(tmp_path, {"litellmModel": "anthropic/claude"}))
    assert config.models[0].transport == "litellm"
    assert config.openai_compatible_routes == frozenset()


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"litellmModel": "openai/x", "transport": "openai-compatible"}, "needs apiBase"),
        (
            {
                "litellmModel": "openai/x",
                "transport": "openai-compatible",
                "local": True,
                "price": {"inputCreditsPerMtok": 1, "outputCreditsPerMtok": 1},
            },
            "needs apiBase",
        ),
        ({"litellmModel": "openai/x", "transport": "grpc"}, "transport"),
    ],
)
def test_bad_transports_are_refused_with_the_reason(
    tmp_path: Path, route: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_gateway_config(write(tmp_path, route))


def test_models_that_enforce_a_json_schema_are_advertised() -> None:
    config = GatewayConfig.model_validate(
        {
            "models": [
                {"name": "gpt-4o-mini", "litellmModel": "openai/gpt-4o-mini"},
                {"name": "told", "litellmModel": "openai/x", "structuredOutput": True},
                {"name": "denied", "litellmModel": "openai/gpt-4o", "structuredOutput": False},
                # One deployment that does not enforce it spoils the model: a call may land
                # on it.
                {"name": "mixed", "litellmModel": "openai/a", "structuredOutput": True},
                {"name": "mixed", "litellmModel": "openai/b", "structuredOutput": False},
                {"name": "unknown", "litellmModel": "openai/unknown"},
            ]
        }
    )
    cost_map = {"gpt-4o-mini": {"supports_response_schema": True}, "denied": {}}
    assert structured_output_models(config, cost_map) == {"gpt-4o-mini", "told"}

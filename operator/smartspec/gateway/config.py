"""The gateway's routing and pricing configuration file, typed.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Configuration".

The file names models, never secrets: a provider key is named by the environment variable
that holds it (mounted from an existing Secret), so the file can live in a ConfigMap and in
git. Several entries with one `name` are load-balanced deployments of that model.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from smartspec.api.manifests import describe_validation_error

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$"


class ConfigError(ValueError):
    """The configuration file is missing or invalid; the message names each problem."""


class PriceOverride(BaseModel):
    """An explicit price, for local models and models litellm's map does not know."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    input_credits_per_mtok: int = Field(ge=0, strict=True)
    output_credits_per_mtok: int = Field(ge=0, strict=True)


class ModelRoute(BaseModel):
    """One deployment of a model the gateway serves."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    name: str = Field(min_length=1, max_length=128, pattern=_NAME)
    """The model name clients ask for (and budgets allow or deny)."""
    litellm_model: str = Field(min_length=1, max_length=256)
    """litellm's provider/model string, e.g. openai/gpt-4o-mini or hosted_vllm/llama-3."""
    api_base: str | None = None
    """Endpoint of an OpenAI-compatible server (vLLM, Ollama, a local model)."""
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    """Environment variable holding the provider key; the key itself never appears here."""
    timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Per-request timeout of this deployment."""
    price: PriceOverride | None = None
    """Price in credits per million tokens; required unless litellm's map prices the model."""
    cost_map_name: str | None = None
    """Name to look up in litellm's cost map when it differs from `name`."""
    local: bool = False
    """Served by a model-server sidecar in each run's generator pod (CORE-004): calls go to
    the endpoint the operator records on the run's current attempt, not to `apiBase`."""
    structured_output: bool | None = None
    """Whether this deployment enforces a JSON schema given as `response_format`; unset:
    what litellm's model map says (`supports_response_schema`), else no. The generator asks
    for its files schema only from models whose every deployment does."""
    transport: Literal["litellm", "openai-compatible"] = "litellm"
    """How the Router reaches this deployment: litellm's provider for `litellmModel`, or
    (for a server that speaks the OpenAI protocol at `apiBase`) one direct HTTP request per
    call, sending the model name after the provider prefix of `litellmModel`."""

    @model_validator(mode="after")
    def _local_models_are_priced(self) -> ModelRoute:
        if self.local and self.price is None:
            raise ValueError(f"local model {self.name} needs an explicit price")
        if self.local and self.api_base is not None:
            raise ValueError(
                f"local model {self.name}: the endpoint comes from the run, not apiBase"
            )
        if self.transport == "openai-compatible" and (self.local or self.api_base is None):
            raise ValueError(
                f"model {self.name}: transport openai-compatible needs apiBase (and is not "
                "for local models)"
            )
        return self

    @property
    def upstream_model(self) -> str:
        """The model name the server is asked for: `litellmModel` after its provider."""
        return self.litellm_model.split("/", 1)[-1]


class GatewayConfig(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    credits_per_usd: int = Field(default=1_000_000, ge=1, strict=True)
    """How many credits one US dollar buys (1,000,000: one credit is a micro-dollar)."""
    models: list[ModelRoute] = Field(min_length=1)
    """Every deployment served."""
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    """Model name -> models to try, in order, when it fails with 429, 5xx or a timeout."""
    num_retries: int = Field(default=2, ge=0, le=10)
    """Retries of one deployment before falling back."""

    @model_validator(mode="after")
    def _fallbacks_name_served_models(self) -> GatewayConfig:
        served = {route.name for route in self.models}
        for source, targets in self.fallbacks.items():
            for name in [source, *targets]:
                if name not in served:
                    raise ValueError(f"fallbacks: {name!r} is not a served model")
        return self

    @property
    def model_names(self) -> list[str]:
        return sorted({route.name for route in self.models})

    @cached_property
    def openai_compatible_routes(self) -> frozenset[str]:
        return frozenset(r.name for r in self.models if r.transport == "openai-compatible")

    @property
    def local_routes(self) -> dict[str, ModelRoute]:
        return {route.name: route for route in self.models if route.local}


def load_gateway_config(path: Path) -> GatewayConfig:
    """Read and validate the file; ConfigError lists every problem."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read: {error}") from None
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(describe_validation_error(error))
        raise ConfigError(f"{path}: {problems}") from None

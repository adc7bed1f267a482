"""The gateway process: settings → configuration, prices, keys, clients → aiohttp server.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Configuration".
"""

from __future__ import annotations

import gc
from typing import Any

from aiohttp import web

from smartspec.gateway.app import Gateway, GatewayOptions, build_app
from smartspec.gateway.config import GatewayConfig, load_gateway_config
from smartspec.gateway.litellm_costs import litellm_cost_map_source, load_litellm_cost_map
from smartspec.kube.client import KubeClient, load_configuration
from smartspec.logic.pricing import PriceTable, build_price_table
from smartspec.logic.run_tokens import parse_token_keys
from smartspec.observability.logs import configure_logging, get_logger
from smartspec.settings import GatewaySettings
from smartspec.storage import S3ObjectStore

log = get_logger(__name__)


def build_prices(config: GatewayConfig, cost_map: dict[str, dict[str, Any]]) -> PriceTable:
    """Overrides from the file win; otherwise litellm's bundled map (offline)."""
    by_name = {}
    for route in config.models:
        entry = cost_map.get(route.cost_map_name or route.name)
        if entry is not None:
            by_name[route.name] = entry
    overrides = {
        route.name: (route.price.input_credits_per_mtok, route.price.output_credits_per_mtok)
        for route in config.models
        if route.price is not None
    }
    return build_price_table(by_name, overrides, config.model_names, config.credits_per_usd)


def structured_output_models(
    config: GatewayConfig, cost_map: dict[str, dict[str, Any]]
) -> frozenset[str]:
    """Models every deployment of which enforces a JSON schema in `response_format`."""
    supported: dict[str, bool] = {}
    for route in config.models:
        entry = cost_map.get(route.cost_map_name or route.name) or {}
        says = route.structured_output
        enforced = says if says is not None else entry.get("supports_response_schema") is True
        supported[route.name] = supported.get(route.name, True) and enforced
    return frozenset(name for name, enforced in supported.items() if enforced)


def build_gateway(settings: GatewaySettings) -> Gateway:
    config = load_gateway_config(settings.gateway_config)
    cost_map = load_litellm_cost_map()
    prices = build_prices(config, cost_map)
    unpriced = sorted(set(config.model_names) - set(prices.models))
    log.info(
        "Loaded gateway configuration",
        models=config.model_names,
        unpriced=unpriced,
        prices_from=litellm_cost_map_source(),
    )
    if unpriced:
        log.warning("Models without a price are refused, never charged 0", models=unpriced)
    return Gateway(
        config=config,
        prices=prices,
        structured=structured_output_models(config, cost_map),
        token_keys=parse_token_keys(
            settings.gateway_token_keys_file.read_text(encoding="utf-8"),
            str(settings.gateway_token_keys_file),
        ),
        kube=KubeClient(load_configuration()),
        store=S3ObjectStore(
            settings.s3_bucket, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region
        ),
        options=GatewayOptions(
            replica=settings.gateway_replica,
            lease_seconds=settings.gateway_lease_seconds,
            flush_seconds=settings.gateway_flush_milliseconds / 1000,
            lease_factor=settings.gateway_lease_factor,
            lease_max_fraction=settings.gateway_lease_max_fraction,
            idle_release_seconds=settings.gateway_idle_release_seconds,
            max_body_bytes=settings.gateway_max_body_bytes,
            run_cache_seconds=settings.gateway_run_cache_seconds,
        ),
    )


def run_gateway(settings: GatewaySettings) -> None:
    """Serve until SIGTERM/SIGINT; on the way out, settle and give back every lease."""
    configure_logging(settings.log_level)
    gateway = build_gateway(settings)
    # What start-up built (litellm's modules, its cost map, the Router: some 330,000
    # objects) lives as long as the process. Left to the collector, every full collection
    # walks all of it, 175 ms on this project's machine, and stalls every call in flight.
    gc.collect()
    gc.freeze()
    web.run_app(
        build_app(gateway),
        host=settings.gateway_host,
        port=settings.gateway_port,
        access_log=None,
        print=None,
        shutdown_timeout=30,
    )

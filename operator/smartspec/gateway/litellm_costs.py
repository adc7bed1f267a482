"""litellm's bundled model cost map, read offline.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Prices".

`import litellm` fetches the cost map from GitHub (and retries in a background thread)
unless LITELLM_LOCAL_MODEL_COST_MAP=True is set first. Prices must not change with the
network, so this module never imports litellm: it finds the installed package with
`importlib.util.find_spec`, which locates a top-level package without running it, and
reads the JSON file that ships inside it. Prices therefore follow the pinned litellm
version, and the source string names that version and the file's digest for the record.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import Any

BUNDLED_COST_MAP_FILE = "model_prices_and_context_window_backup.json"
# Top-level keys of the map that are not models: litellm's documented template entry
# (all prices 0.0) and, in some versions, its provider fallback table.
_NOT_MODELS = frozenset({"sample_spec", "fallback_generalizations"})


def load_litellm_cost_map() -> dict[str, dict[str, Any]]:
    """Model name -> litellm's entry (input_cost_per_token, output_cost_per_token, ...)."""
    document = json.loads(_bundled_cost_map_path().read_bytes())
    if not isinstance(document, dict):
        raise RuntimeError(f"litellm's {BUNDLED_COST_MAP_FILE} is not a JSON object")
    return {
        name: entry
        for name, entry in document.items()
        if name not in _NOT_MODELS and isinstance(entry, dict)
    }


def litellm_cost_map_source() -> str:
    """Which prices these are: litellm's version, the file and its sha256."""
    digest = hashlib.sha256(_bundled_cost_map_path().read_bytes()).hexdigest()
    version = importlib.metadata.version("litellm")
    return f"litellm {version} {BUNDLED_COST_MAP_FILE} sha256:{digest}"


def _bundled_cost_map_path() -> Path:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("litellm is not installed; it provides the model cost map")
    for location in spec.submodule_search_locations:
        path = Path(location) / BUNDLED_COST_MAP_FILE
        if path.is_file():
            return path
    raise RuntimeError(f"litellm is installed without its {BUNDLED_COST_MAP_FILE}")

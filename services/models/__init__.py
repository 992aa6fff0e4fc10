"""The model-call layer: OpenAI-compatible calls with retries, quotas, circuit breaking,
structured answers, costs and metrics. Used by the worker and anything else that calls models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmflow.services.models.client import (
        ModelCallError,
        ModelClient,
        call_id,
        make_openai_client,
    )
    from llmflow.services.models.config import Connection, Endpoint, ModelsConfig
    from llmflow.services.models.costs import Price
    from llmflow.services.models.metrics import ModelMetrics

# The module of each public name, imported on first use: the simulator imports
# `models.tokens` alone and would otherwise load the openai SDK it never calls (~1 s).
_HOMES = {
    "Connection": "config",
    "Endpoint": "config",
    "ModelCallError": "client",
    "ModelClient": "client",
    "ModelMetrics": "metrics",
    "ModelsConfig": "config",
    "Price": "costs",
    "call_id": "client",
    "make_openai_client": "client",
}

__all__ = [
    "Connection",
    "Endpoint",
    "ModelCallError",
    "ModelClient",
    "ModelMetrics",
    "ModelsConfig",
    "Price",
    "call_id",
    "make_openai_client",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)

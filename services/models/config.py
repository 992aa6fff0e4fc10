"""What the model-call layer is configured with; the composition root builds it from settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from llmflow.services.models.costs import Price
from llmflow.services.models.hedging import HedgePolicy
from llmflow.services.models.quotas import QuotaLimits
from llmflow.services.models.retry import RetryPolicy


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Endpoint(_Config):
    """A further OpenAI-compatible endpoint that calls may name (for fallbacks)."""

    base_url: str
    """E.g. `https://api.openai.com/v1` or `http://vllm:8000/v1`."""
    api_key_env: str | None = None
    """Name of the environment variable holding its API key (keys never sit in config)."""


class Connection(_Config):
    """An endpoint as the client reaches it: its URL and its API key, read already."""

    base_url: str
    """The endpoint's OpenAI-compatible base URL."""
    api_key: SecretStr = SecretStr("")
    """Its API key; empty when it needs none."""


class ModelsConfig(_Config):
    """Everything a `ModelClient` is built from. No defaults here: the worker's settings are
    the one place they live (`worker.settings.Settings.models_config`)."""

    connections: dict[str, Connection]
    """Every endpoint calls may name, `default` included."""
    retry: RetryPolicy
    """Retries of one call at one endpoint."""
    hedge: HedgePolicy
    """A second request for an attempt that runs past the usual latency of its model."""
    quotas: dict[str, QuotaLimits]
    """Group-wide limits per model or `endpoint/model`."""
    quota_max_workers: int = Field(ge=1)
    """The most workers that will share the quotas."""
    prices: dict[str, Price]
    """USD per million tokens per model."""
    breaker_failures: int = Field(ge=1)
    """Consecutive failures that open an endpoint's circuit."""
    breaker_cooldown_s: float = Field(gt=0)
    """How long an open circuit skips its endpoint before one trial call."""

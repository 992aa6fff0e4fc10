"""Settings of the model SIMULATOR: latency, injected faults and the advertised models."""

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_MODELS = ["sim-chat", "sim-vision", "sim-embed", "gpt-4o-mini", "text-embedding-3-small"]


class SimulatorConfig(BaseModel):
    """How the SIMULATOR behaves; every field maps to a command-line flag of the same name."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    latency_ms: float = Field(default=0, ge=0)
    """Base delay added to every model call (faults included), in milliseconds."""

    jitter_ms: float = Field(default=0, ge=0)
    """Uniform +/- spread around `latency_ms`, in milliseconds (the delay never goes below 0)."""

    rate_429: float = Field(default=0, ge=0, le=1)
    """Share of model calls answered 429 (rate_limit_error) with a Retry-After header."""

    retry_after_s: float = Field(default=1, ge=0)
    """Seconds announced in Retry-After (rounded up) and retry-after-ms on 429 answers."""

    rate_500: float = Field(default=0, ge=0, le=1)
    """Share of model calls answered 500 (server_error)."""

    rate_slow: float = Field(default=0, ge=0, le=1)
    """Share of model calls that sleep `slow_ms` before answering normally (client timeouts)."""

    slow_ms: float = Field(default=30_000, ge=0)
    """Extra delay of a slow answer, in milliseconds."""

    rate_invalid: float = Field(default=0, ge=0, le=1)
    """Share of `json_schema` chat requests answered with content that breaks the schema, for
    testing repair and dead-lettering; drawn apart from the 429/500/slow band."""

    seed: int = 0
    """Seed of the fault, invalid-answer and jitter random generators, so runs replay exactly."""

    models: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS))
    """Model ids listed by GET /v1/models; calls naming other models are answered too."""

    require_api_key: str | None = None
    """When set, /v1 calls must send `Authorization: Bearer <this key>` or get 401."""

    rpm_limit: int | None = Field(default=None, gt=0)
    """Requests per minute advertised in x-ratelimit-* headers (not enforced); None omits them."""

    @model_validator(mode="after")
    def _fault_shares_fit(self) -> Self:
        total = self.rate_429 + self.rate_500 + self.rate_slow
        if total > 1 + 1e-9:  # tolerate float sums such as 0.1 + 0.2 + 0.7
            raise ValueError(f"rate_429 + rate_500 + rate_slow must be <= 1, got {total:g}")
        return self

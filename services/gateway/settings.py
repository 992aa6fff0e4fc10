"""The gateway's settings, from documented environment variables (`LLMFLOW_GATEWAY_<FIELD>`,
Kafka's customary `KAFKA_BOOTSTRAP_SERVERS`). Frozen; tokens are `SecretStr` and never
printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmflow.errors import ConfigError
from llmflow.services.worker.budgets import Budget


class Credential(BaseModel):
    """One bearer token and what it may do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token: SecretStr = Field(min_length=16)
    """The bearer token itself (16 characters at least); never logged."""
    tenant: str = Field(min_length=1, max_length=128)
    """The tenant its events are published as, and whose results it reads."""
    replay: bool = False
    """May stream from the start of the result topics (`from=earliest`), a read of
    everything they retain; every token may resume a stream after an id it was given."""


def _credentials(value: Any) -> Any:
    """`{"<token>": {"tenant": "acme", "replay": false}}` -> credentials."""
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, dict):
        if not all(isinstance(grant, dict) for grant in value.values()):
            raise ValueError('each token maps to {"tenant": "<tenant>", "replay": false}')
        return [{"token": token, **grant} for token, grant in value.items()]
    return value


def _file_credentials(path: Path) -> list[Credential]:
    """The credentials of a tokens file; a ConfigError that shows none of its values (a
    value may be a token)."""
    where = f"LLMFLOW_GATEWAY_TOKENS_FILE={path}"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise ConfigError(f"{where}: {reason}") from None
    if not isinstance(raw, dict | list):
        raise ConfigError(f'{where}: not {{"<token>": {{"tenant": "<tenant>", "replay": false}}}}')
    try:
        entries = _credentials(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    found = []
    for n, entry in enumerate(entries, start=1):
        try:
            found.append(Credential.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(
                " ".join([*map(str, error["loc"]), error["msg"]])
                for error in exc.errors(include_input=False, include_url=False)
            )
            raise ConfigError(f"{where}: token {n}: {problems}") from None
    return found


class GatewaySettings(BaseSettings):
    """Every field reads `LLMFLOW_GATEWAY_<FIELD>`."""

    model_config = SettingsConfigDict(
        env_prefix="LLMFLOW_GATEWAY_",
        frozen=True,
        extra="ignore",
        use_attribute_docstrings=True,
        populate_by_name=True,  # GatewaySettings(budgets=...), as every other field
    )

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "LLMFLOW_KAFKA_BOOTSTRAP_SERVERS"),
    )
    """Comma-separated `host:port` list (`KAFKA_BOOTSTRAP_SERVERS`)."""
    host: str = "127.0.0.1"
    """Address the HTTP server binds to (0.0.0.0 inside containers)."""
    port: int = Field(default=8088, ge=0, le=65535)
    """Port of the HTTP server (0: any free port, printed at start-up)."""
    tokens: list[Credential] = Field(default_factory=list)
    """Bearer tokens as JSON, `{"<token>": {"tenant": "acme", "replay": false}}`."""
    tokens_file: Path | None = None
    """A JSON file of the same form, read at start-up (added to `tokens`)."""
    insecure_no_auth: bool = False
    """Run without tokens: anyone may publish as any tenant and read every result. Without
    it, a gateway with no token configured refuses to start."""
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest request body; a larger one is refused with 413 (Content-Length first, then
    the bytes read)."""
    max_batch_events: int = Field(default=1000, ge=1)
    """Most events in one request; more is refused with 413."""
    max_record_bytes: int = Field(default=1_000_000, ge=64 * 1024)
    """Largest Kafka record the producer sends (match the broker's `message.max.bytes`)."""
    max_pending_events: int = Field(default=10_000, ge=1)
    """Events sent and not yet acked by the broker, over all requests; a request that would
    pass it is refused with 429 and `Retry-After`."""
    max_pending_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Bytes of those events; the same 429 past it."""
    publish_timeout_s: float = Field(default=10.0, gt=0)
    """How long a request waits for the broker's acks before it answers 503."""
    retry_after_s: int = Field(default=1, ge=1)
    """The `Retry-After` of a 429."""
    max_wait_s: float = Field(default=60.0, ge=0)
    """Cap of a long poll's `wait`."""
    index_results: int = Field(default=20_000, ge=1)
    """Results the in-memory index keeps (the newest); older ones are forgotten."""
    index_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)
    """Bytes of result records the index keeps at most, whatever their number."""
    index_lookback: int = Field(default=1000, ge=0)
    """Records per result partition read before their end at start-up."""
    stream_queue: int = Field(default=1000, ge=1)
    """Results waiting for one stream client; a client further behind gets an `error` event
    and is closed (it resumes with its last id)."""
    max_streams: int = Field(default=1000, ge=1)
    """Streams open at once (result streams and console pages); one more is refused with
    429 and `Retry-After`."""
    max_streams_per_tenant: int = Field(default=100, ge=1)
    """Streams one tenant may have open at once; the same 429 past it."""
    heartbeat_s: float = Field(default=15.0, gt=0)
    """Interval of the comment lines that keep an idle stream open through proxies."""
    write_timeout_s: float = Field(default=30.0, gt=0)
    """A connection whose client takes none of the bytes waiting for it this long is reset
    (a stream's, or an ordinary answer's)."""
    idle_timeout_s: float = Field(default=30.0, gt=0)
    """A connection that has not sent a whole request head this long after it opened, or
    after its last answer, is closed: idle keep-alive connections and slow headers alike."""
    body_timeout_s: float = Field(default=30.0, gt=0)
    """A request body that has not fully arrived this long after its head is refused with
    408."""
    worker_group: str = Field(
        default="llmflow",
        min_length=1,
        validation_alias=AliasChoices("LLMFLOW_GATEWAY_WORKER_GROUP", "LLMFLOW_APP_ID"),
    )
    """The workers' consumer group (their `LLMFLOW_APP_ID`, read as well): the console's lag
    is the input topics' end offsets minus this group's committed offsets."""
    audit_topic: str = Field(default="llmflow.audit", min_length=1)
    """Where the console's replays are recorded, one JSON record each (who, when, which dead
    letter, where it went)."""
    console_every_s: float = Field(default=2.0, gt=0)
    """How often the console reads the topics' end offsets and the group's commits, and
    pushes a snapshot to each open page."""
    console_window_s: float = Field(default=300.0, gt=0)
    """How far back the console's rates and sparklines reach."""
    budgets: dict[str, Budget] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("LLMFLOW_GATEWAY_BUDGETS", "LLMFLOW_BUDGETS"),
    )
    """The workers' per-tenant budgets (`LLMFLOW_BUDGETS`, the same JSON): the console shows
    each tenant's spend this period against them, from the workers' spend changelogs."""

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> Any:
        return _credentials(value)

    def credentials(self) -> list[Credential]:
        """`tokens` and those of `tokens_file`; a token given twice is an error."""
        found = list(self.tokens)
        if self.tokens_file is not None:
            found += _file_credentials(self.tokens_file)
        secrets = [c.token.get_secret_value() for c in found]
        if len(set(secrets)) != len(secrets):
            raise ConfigError("LLMFLOW_GATEWAY_TOKENS: a token is given twice")
        return found

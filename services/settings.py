"""Settings from documented environment variables. Frozen; secrets are masked when printed."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every field reads `LLMFLOW_<FIELD>`; Kafka and OpenAI use their customary names too."""

    model_config = SettingsConfigDict(
        env_prefix="LLMFLOW_", frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "LLMFLOW_KAFKA_BOOTSTRAP_SERVERS"),
    )
    """Comma-separated `host:port` list (`KAFKA_BOOTSTRAP_SERVERS`)."""
    openai_base_url: str = Field(
        default="http://127.0.0.1:8400/v1",
        validation_alias=AliasChoices("OPENAI_BASE_URL", "LLMFLOW_OPENAI_BASE_URL"),
    )
    """OpenAI-compatible endpoint (`OPENAI_BASE_URL`); the default is the local model simulator."""
    openai_api_key: SecretStr = Field(
        default=SecretStr("simulator"),
        validation_alias=AliasChoices("OPENAI_API_KEY", "LLMFLOW_OPENAI_API_KEY"),
    )
    """API key for that endpoint (`OPENAI_API_KEY`)."""

    app_id: str = "llmflow"
    """Faust app id = Kafka consumer group; workers with the same id share partitions."""
    concurrency: int = Field(default=100, ge=1, le=5000)
    """Events in flight per topology per worker (each may run several model calls)."""
    topic_partitions: int = Field(default=4, ge=1)
    """Partitions for topics the worker creates; bounds how many workers can share a topology."""
    topic_replication_factor: int = Field(default=1, ge=1)
    """Replication factor for topics the worker creates (3 in production)."""
    data_dir: Path = Path(".llmflow")
    """Worker state (faust data folder) and the default org-data database live here."""
    orgdata_path: Path | None = None
    """SQLite org-data file; defaults to `<data_dir>/orgdata.sqlite3`."""
    image_root: Path | None = None
    """`file://` image URLs must lie inside this folder; unset, file URLs are refused."""
    image_allow_private_hosts: bool = False
    """Let http(s) image URLs reach loopback/private addresses (tests and local demos only)."""
    image_threads: int = Field(default=2, ge=1)
    """Threads preparing images; Pillow releases the GIL while decoding and resizing."""
    model_timeout_s: float = Field(default=60.0, gt=0)
    """Deadline of one HTTP attempt of a model call (the SDK default of 600 s is far too long)."""
    model_max_retries: int = Field(default=2, ge=0)
    """SDK retries for 408/409/429/5xx and connection errors, with backoff and Retry-After."""
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    """Recorded in every output."""

    @property
    def orgdata_file(self) -> Path:
        return self.orgdata_path or self.data_dir / "orgdata.sqlite3"

"""The worker's settings, from documented environment variables. Frozen; secrets are masked
when printed. The environment is read here only: components get config objects of their own
(`models_config`, `image_limits`)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmflow.services.images.prepare import ImageLimits
from llmflow.services.models.config import Connection, Endpoint, ModelsConfig
from llmflow.services.models.costs import DEFAULT_PRICES, Price
from llmflow.services.models.hedging import HedgePolicy
from llmflow.services.models.quotas import QuotaLimits
from llmflow.services.models.retry import RetryPolicy
from llmflow.services.worker.budgets import Budget
from llmflow.topologies.spec import Topology


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (a container's cpuset, `taskset`),
    which may be fewer than the machine has (`os.cpu_count()`). A CPU quota (Kubernetes'
    `limits.cpu`) does not show here: deployments that use one say how many processes."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity on this platform
        return os.cpu_count() or 1


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
    """Worker state lives here: faust's data folder and the worker's own copy of the org
    data (`orgdata.sqlite3`, read from the table topics). One folder per worker."""
    orgdata_topic_prefix: str = Field(default="llmflow.orgdata.", pattern=r"^[A-Za-z0-9._-]*$")
    """Org-data table `t` lives in the compacted topic `<prefix>t`."""
    collections_file: Path | None = None
    """YAML file declaring the document collections; unset, the shipped
    `topologies/collections.yaml`."""
    image_root: Path | None = None
    """`file://` image URLs must lie inside this folder; unset, file URLs are refused."""
    image_allow_private_hosts: bool = False
    """Let http(s) image URLs reach loopback/private addresses (tests and local demos only)."""
    max_record_bytes: int = Field(default=1_000_000, ge=64 * 1024)
    """Largest Kafka record the worker writes, in bytes: match the broker's
    `message.max.bytes` (and the topics' `max.message.bytes`); the worker's producer takes it
    as its max request size. A dead letter carries its event's original bytes only while it
    stays under this size."""
    image_threads: int = Field(default=2, ge=1)
    """Threads preparing images; Pillow releases the GIL while decoding and resizing."""
    retry: RetryPolicy = RetryPolicy()
    """Retries of model calls, as JSON, e.g. `{"deadline_s": 60, "attempt_timeout_s": 20}`."""
    hedge: HedgePolicy = HedgePolicy()
    """Hedging of slow model requests, as JSON, e.g. `{"enabled": true, "percentile": 95,
    "min_delay_s": 1, "max_hedges": 1}`; off by default (a hedge may be billed twice)."""
    endpoints: dict[str, Endpoint] = Field(default_factory=dict)
    """Named endpoints besides `default` (OPENAI_BASE_URL), as JSON, for fallbacks."""
    quotas: dict[str, QuotaLimits] = Field(default_factory=dict)
    """Group-wide limits per model (or `endpoint/model`), as JSON, e.g.
    `{"gpt-4o-mini": {"rpm": 500, "tpm": 200000, "max_concurrent": 100}}`."""
    quota_max_workers: int = Field(default=4, ge=1)
    """The most workers that will share the quotas: each leaves one request per minute of
    headroom, so the group stays under `rpm` in every sliding minute."""
    prices: dict[str, Price] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    """USD per million tokens per model, as JSON; replaces the defaults when set."""
    budgets: dict[str, Budget] = Field(default_factory=dict)
    """Per-tenant budgets, as JSON, e.g. `{"acme": {"usd": 5, "period": "day"}}`."""
    spend_flush_s: float = Field(default=0.5, gt=0, le=60)
    """How often each worker writes the spend totals that changed to the spend table's
    changelog (one record per tenant, period and partition, however many calls): the other
    workers see a tenant's spend, and park it once over budget, within this time plus the
    changelog's lag. The worker's own spend counts at once."""
    metric_tenants: list[str] = Field(default_factory=list)
    """Tenants whose cost gets a `tenant` label of its own in `llmflow_cost_usd_total`, as
    JSON, e.g. `["acme", "globex"]`; budgeted tenants always do, every other one is
    counted as `other` (one series per customer would grow without bound)."""

    def labelled_tenants(self) -> set[str]:
        return set(self.metric_tenants) | set(self.budgets)

    breaker_failures: int = Field(default=5, ge=1)
    """Consecutive failures that open an endpoint's circuit (calls go to fallbacks)."""
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    """How long an open circuit skips its endpoint before one trial call."""
    outage_probe_s: float = Field(default=2.0, gt=0)
    """While a topology is paused for a model endpoint that is down, how often the endpoint
    is probed (`GET /models`); the topology resumes as soon as it answers."""
    outage_max_holds: int = Field(default=5, ge=0)
    """Times one event may wait for its endpoint to come back before it is dead-lettered
    (an event whose calls fail on an endpoint that answers probes is the event's fault)."""
    instance_id: str | None = None
    """Static group membership: a stable id per worker (e.g. the pod name of a StatefulSet),
    unique in the group. A worker restarted with the same id takes back its partitions at
    once, without a rebalance that stops the others. Unset: dynamic membership."""
    session_timeout_s: float = Field(default=10.0, ge=6, le=300)
    """How long the group waits for a worker that stopped heartbeating before it hands the
    worker's partitions to the others (a crash without restart, a static member stopped)."""
    rebalance_timeout_s: float = Field(default=30.0, ge=5)
    """How long a rebalance waits for every worker to finish its events in flight."""
    processes: int = Field(default_factory=usable_cpus, ge=1)
    """Worker processes on this machine. One event loop keeps about one core busy, so one
    process per core: above 1 a supervisor runs that many single-process workers in the
    consumer group, each with its share of the partitions, its own data folder, static id
    and HTTP port, and serves their merged metrics (`supervisor`). Default: the CPUs this
    process may use."""
    drain_timeout_s: float = Field(default=30.0, gt=0)
    """On SIGTERM, how long the worker may finish its events in flight; then it exits
    without committing the unfinished ones (they are redelivered)."""
    metrics_port: int | None = None
    """Serve `/metrics` (Prometheus), `/healthz` (the event loop answers) and `/readyz`
    (partitions assigned, org data caught up, no topology paused for a model endpoint) on
    this port; unset, no HTTP server."""
    metrics_host: str = "127.0.0.1"
    """Address that HTTP server binds to (0.0.0.0 inside containers)."""
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    """Recorded in every output."""
    preflight: bool = True
    """Check the broker and every model endpoint the topologies use before starting, and exit
    (code 2) with one line per problem naming the variable to fix; false skips the checks."""

    @property
    def orgdata_file(self) -> Path:
        return self.data_dir / "orgdata.sqlite3"

    def orgdata_topic(self, table: str) -> str:
        return f"{self.orgdata_topic_prefix}{table}"

    def models_config(self) -> ModelsConfig:
        """The model-call layer's config; named endpoints' API keys are read now."""
        connections = {
            "default": Connection(base_url=self.openai_base_url, api_key=self.openai_api_key)
        }
        for name, endpoint in self.endpoints.items():
            env = endpoint.api_key_env
            key = os.environ.get(env, "") if env else ""
            connections[name] = Connection(base_url=endpoint.base_url, api_key=SecretStr(key))
        return ModelsConfig(
            connections=connections,
            retry=self.retry,
            hedge=self.hedge,
            quotas=self.quotas,
            quota_max_workers=self.quota_max_workers,
            prices=self.prices,
            breaker_failures=self.breaker_failures,
            breaker_cooldown_s=self.breaker_cooldown_s,
        )

    def image_limits(self, topology: Topology) -> ImageLimits:
        """How images are prepared for `topology`: its own limits, this worker's file access."""
        return ImageLimits(
            max_pixels=topology.images.max_pixels,
            max_side=topology.images.max_side,
            file_root=self.image_root,
            allow_private_hosts=self.image_allow_private_hosts,
        )

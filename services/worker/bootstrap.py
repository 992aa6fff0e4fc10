"""The composition root: the one place that turns settings and topologies into a worker.

Everything a worker uses is built here, once, and handed to what needs it: topics, metrics,
the model client, the org-data store, image limits, the pipelines and the faust app. The
components never build each other, so each can be tested with small fakes of the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faust
from opentelemetry.trace import Tracer

from llmflow.errors import ConfigError
from llmflow.services.broker.topics import EnsureTopics, ensure_topics
from llmflow.services.models.breaker import CircuitBreaker
from llmflow.services.models.client import ModelClient, make_openai_client
from llmflow.services.models.config import ModelsConfig
from llmflow.services.models.metrics import ModelMetrics
from llmflow.services.models.quotas import QuotaRegistry
from llmflow.services.orgdata.materializer import Materializer
from llmflow.services.orgdata.search import Retriever
from llmflow.services.orgdata.store import OrgDataStore
from llmflow.services.worker import tracing
from llmflow.services.worker.app import (
    add_agent,
    close_on_shutdown,
    committed_offsets,
    create_app,
    declare_tables,
    divide_quotas_on_rebalance,
    flush_spend,
    follow_spend,
    reread_marks_on_rebalance,
    serve_http,
    track_membership,
)
from llmflow.services.worker.budgets import Budget, SpendView
from llmflow.services.worker.health import GroupMembership, Readiness
from llmflow.services.worker.metrics import Metrics
from llmflow.services.worker.orgdata import OrgDataSource, org_data
from llmflow.services.worker.outage import OutageGate
from llmflow.services.worker.pipeline import Pipeline
from llmflow.services.worker.ports import Budgets, PaidCalls
from llmflow.services.worker.settings import Settings
from llmflow.services.worker.shadow import ShadowBudget, ShadowRun, shadow_topic_problem
from llmflow.services.worker.state import (
    CHANGELOG_CONFIG,
    SpendTable,
    TableAnsweredMarks,
    TableBudgets,
    TablePaidCalls,
)
from llmflow.topologies.loader import load_topology
from llmflow.topologies.spec import Shadow, Topology

log = logging.getLogger(__name__)


def model_client(config: ModelsConfig, metrics: ModelMetrics | None = None) -> ModelClient:
    """A client for every configured endpoint, sharing one retry policy, quotas and breaker.

    The SDK clients open their HTTP sessions on first use, inside the running event loop.
    """
    clients = {
        name: make_openai_client(c.base_url, c.api_key.get_secret_value(), config.retry)
        for name, c in config.connections.items()
    }
    return ModelClient(
        clients,
        policy=config.retry,
        quotas=QuotaRegistry(config.quotas, max_workers=config.quota_max_workers),
        breaker=CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s),
        prices=config.prices,
        hedge=config.hedge,
        metrics=metrics,
    )


def build_pipeline(
    settings: Settings,
    topology: Topology,
    *,
    models: ModelClient,
    orgdata: OrgDataStore,
    executor: Executor,
    paid: PaidCalls | None,
    budgets: Budgets,
    worker_id: str | None = None,
    tracer: Tracer = tracing.NO_TRACER,
) -> Pipeline:
    """A pipeline for `topology` on this worker's clients (a replay builds its own too)."""
    return Pipeline(
        topology,
        models=models,
        orgdata=orgdata,
        image_limits=settings.image_limits(topology),
        executor=executor,
        worker_id=worker_id or settings.worker_id,
        paid=paid,
        budgets=budgets,
        max_record_bytes=settings.max_record_bytes,
        passages=Retriever(orgdata),
        collections=orgdata.collections,
        tracer=tracer,
    )


def outage_gate(
    settings: Settings, topology: str, models: ModelClient, metrics: Metrics
) -> OutageGate:
    """Where `topology`'s events wait while a model endpoint they need is down."""
    return OutageGate(
        topology,
        probe=models.probe,
        reset_circuits=models.reset_circuits,
        paused_gauge=metrics.paused,
        interval_s=settings.outage_probe_s,
    )


def _shadow_topics(spec: Topology) -> list[str]:
    return [spec.shadow_topic] if spec.shadow_topic else []


def _shadow(
    shadow: Shadow,
    candidate: Topology,
    spend_table: SpendTable,
    spend: SpendView,
    metrics: Metrics,
    pipeline_of: Callable[[Topology, Budgets, TablePaidCalls | None], Pipeline],
    started: list[ShadowRun],
) -> Callable[[Any], ShadowRun]:
    """The factory of a topology's shadow run, given the faust topic of its results; the
    runs it makes are added to `started` (to be closed with the worker). No pay-once table:
    a shadow outlives its event's commit, when the event's answers are dropped."""
    label = f"shadow:{candidate.name}:{candidate.version}"
    limits = (
        {}
        if shadow.budget_usd is None
        else {label: Budget(usd=shadow.budget_usd, period=shadow.period)}
    )
    budget = ShadowBudget(TableBudgets(limits, spend_table, spend), label)
    pipeline = pipeline_of(candidate, budget, None)

    def make(sink: Any) -> ShadowRun:
        run = ShadowRun(pipeline, sink, shadow.share, budget, metrics, shadow.max_in_flight)
        started.append(run)
        return run

    return make


def _org_data_check(follower: Materializer) -> Callable[[], str | None]:
    def check() -> str | None:
        if not follower.follows_tables or follower.ready:
            return None
        return "org data not caught up with its topics yet"

    return check


def _gates_check(gates: list[OutageGate]) -> Callable[[], str | None]:
    def check() -> str | None:
        paused = [gate.topology for gate in gates if gate.paused]
        if not paused:
            return None
        return f"paused, a model endpoint they need is down: {', '.join(paused)}"

    return check


def bootstrap(
    settings: Settings,
    topologies: Sequence[Topology | str | Path],
    *,
    ensure: EnsureTopics = ensure_topics,
    org: OrgDataSource = org_data,
) -> faust.App:
    """The worker's faust app for `topologies` (specs or YAML files), ready to run.

    Creates every topic the topologies read or write first, so partition counts are chosen
    here rather than left to auto-creation, and the tables can be co-partitioned.
    """
    specs = [t if isinstance(t, Topology) else load_topology(t) for t in topologies]
    taken = {topic for spec in specs for topic in spec.topics}
    for spec in specs:
        for topic in _shadow_topics(spec):
            problem = shadow_topic_problem(topic, taken, settings.orgdata_topic_prefix)
            if problem:
                raise ConfigError(f"topology {spec.name}: {problem}")
    traces = tracing.configure_tracing()  # None unless the OTEL_* variables ask for it
    tracer = tracing.tracer_of(traces)
    partitions = ensure(
        settings.kafka_bootstrap_servers,
        [topic for spec in specs for topic in [*spec.topics, *_shadow_topics(spec)]],
        settings.topic_partitions,
        settings.topic_replication_factor,
        None,
    )
    metrics = Metrics(settings.labelled_tenants())
    models = model_client(settings.models_config(), metrics.models)
    candidates = [spec.candidate for spec in specs if spec.candidate is not None]
    orgdata, follower = org(settings, [*specs, *candidates], ensure)
    executor = ThreadPoolExecutor(settings.image_threads, thread_name_prefix="images")
    spend = SpendView()

    app = create_app(settings)
    # Read at scrape time from faust's consumer, which exists once the app has started.
    metrics.lag.follow(lambda: app.consumer if app.started else None)
    changelogs: dict[str, int] = {}
    marks: list[TableAnsweredMarks] = []
    spend_tables: list[SpendTable] = []
    gates: list[OutageGate] = []
    shadows: list[ShadowRun] = []
    follow_any_spend = bool(settings.budgets)
    for spec in specs:
        count = partitions[spec.input_topic]
        tables = declare_tables(app, spec, count)
        # faust creates its changelogs as it starts; a worker whose consumer looked them up
        # a moment before saw 0 partitions, and failed every table write for its lifetime.
        ensure(
            settings.kafka_bootstrap_servers,
            tables.changelogs,
            count,
            settings.topic_replication_factor,
            {"cleanup.policy": "compact", **CHANGELOG_CONFIG},
        )
        paid = TablePaidCalls(tables.paid)
        answered = TableAnsweredMarks(
            tables.answered, committed_offsets(app, spec.input_topic), paid
        )
        spend_table = SpendTable(tables.spend, spend)
        spend_tables.append(spend_table)
        budgets = TableBudgets(settings.budgets, spend_table, spend)

        def pipeline_of(
            topology: Topology, budgets: Budgets, paid: TablePaidCalls | None = paid
        ) -> Pipeline:
            return build_pipeline(
                settings,
                topology,
                models=models,
                orgdata=orgdata,
                executor=executor,
                paid=paid,
                budgets=budgets,
                tracer=tracer,
            )

        pipeline = pipeline_of(spec, budgets)
        shadow = None
        if spec.shadow is not None and spec.candidate is not None:
            shadow = _shadow(
                spec.shadow, spec.candidate, spend_table, spend, metrics, pipeline_of, shadows
            )
            follow_any_spend = follow_any_spend or spec.shadow.budget_usd is not None
        gate = outage_gate(settings, spec.name, models, metrics)
        gates.append(gate)
        add_agent(
            app,
            pipeline,
            answered,
            metrics,
            settings.concurrency,
            gate,
            settings.outage_max_holds,
            shadow,
        )
        marks.append(answered)
        changelogs[tables.spend_changelog] = count
    if settings.metrics_port is not None:
        membership = GroupMembership()
        track_membership(app, membership)
        readiness = Readiness([membership.check, _org_data_check(follower), _gates_check(gates)])
        serve_http(app, metrics.registry, readiness, settings.metrics_host, settings.metrics_port)
    inputs = {spec.input_topic: partitions[spec.input_topic] for spec in specs}
    divide_quotas_on_rebalance(app, models.quotas, metrics, inputs)
    reread_marks_on_rebalance(app, marks)
    flush_spend(app, spend_tables, settings.spend_flush_s)
    if follow_any_spend:
        follow_spend(app, settings.kafka_bootstrap_servers, spend, changelogs)

    async def close() -> None:
        for gate in gates:
            await gate.close()
        for run in shadows:
            await run.close()
        for spend_table in spend_tables:  # the last spend, shadows' included
            try:
                await spend_table.flush()
            except Exception as exc:
                log.error("spend: the last %d totals were not written (%r)", spend_table.dirty, exc)
        await models.close()
        executor.shutdown(wait=False, cancel_futures=True)
        follower.stop()
        orgdata.close()
        if traces is not None:  # exports the spans still queued (a blocking call)
            await asyncio.to_thread(traces.shutdown)

    close_on_shutdown(app, close)
    log.warning(
        "worker %s: %s on %s, model endpoint %s, %d events in flight per topology",
        settings.worker_id,
        ", ".join(f"{spec.name} v{spec.version}" for spec in specs),
        settings.kafka_bootstrap_servers,
        settings.openai_base_url,
        settings.concurrency,
    )
    return app

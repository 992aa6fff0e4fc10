"""The worker's org data: publishing tables to their topics as the settings say, and the
worker's own copy of the tables its topologies name (`org_data`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from openai import AsyncOpenAI

from llmflow.errors import ConfigError
from llmflow.services.broker.topics import EnsureTopics, ensure_topics
from llmflow.services.orgdata.loader import sample_records
from llmflow.services.orgdata.materializer import Materializer
from llmflow.services.orgdata.publish import COMPACTED, LoadReport, Target, publish_table
from llmflow.services.orgdata.store import OrgDataStore
from llmflow.services.worker.settings import Settings
from llmflow.topologies.collections import Collection, load_collections
from llmflow.topologies.spec import Topology

log = logging.getLogger(__name__)

# settings, topologies, ensure topics -> the worker's copy, caught up, and what follows it
OrgDataSource = Callable[
    [Settings, Sequence[Topology], EnsureTopics], tuple[OrgDataStore, Materializer]
]


def publish_tables(
    settings: Settings,
    tables: Mapping[str, list[dict[str, Any]]],
    key_field: str = "id",
    *,
    full_sync: bool = False,
) -> list[LoadReport]:
    """Publish checked records to their tables' topics (created compacted when missing);
    a collection's passages are embedded through its endpoint first."""
    collections = load_collections(settings.collections_file)
    reports = []
    for table, records in tables.items():
        collection = collections.get(table)
        target = Target(
            settings.kafka_bootstrap_servers,
            settings.orgdata_topic(table),
            settings.topic_partitions,
            settings.topic_replication_factor,
            settings.max_record_bytes,
        )
        ensure_topics(
            target.bootstrap_servers,
            [target.topic],
            target.partitions,
            target.replication_factor,
            COMPACTED,
        )
        embedder = _embedder(settings, collection) if collection else None
        reports.append(
            publish_table(
                target,
                table,
                records,
                key_field,
                collection=collection,
                embedder=embedder,
                full_sync=full_sync,
            )
        )
    return reports


def publish_samples(settings: Settings) -> list[LoadReport]:
    """Publish the bundled sample tables."""
    return publish_tables(settings, sample_records())


def _embedder(settings: Settings, collection: Collection) -> AsyncOpenAI:
    endpoint = collection.embedding.endpoint
    connection = settings.models_config().connections.get(endpoint)
    if connection is None:
        raise ConfigError(
            f"collection {collection.name}: no endpoint {endpoint!r} (LLMFLOW_ENDPOINTS)"
        )
    # An endpoint without a key (a local one) gets a placeholder: the SDK refuses none.
    key = connection.api_key.get_secret_value() or "unset"
    return AsyncOpenAI(base_url=connection.base_url, api_key=key)


def org_data(
    settings: Settings, specs: Sequence[Topology], ensure: EnsureTopics = ensure_topics
) -> tuple[OrgDataStore, Materializer]:
    """The worker's own copy of the tables its topologies name, caught up with their topics
    (as they ended when it started) before it returns: a worker takes no events before."""
    collections = load_collections(settings.collections_file)
    tables: set[str] = set()
    for spec in specs:
        if spec.enrichment is not None:
            tables.add(spec.enrichment.table)
        if spec.retrieval is not None:
            if spec.retrieval.collection not in collections:
                raise ConfigError(
                    f"topology {spec.name}: no document collection {spec.retrieval.collection!r}"
                    f" in {settings.collections_file or 'the shipped collections.yaml'}"
                )
            wanted = set(spec.retrieval.filters) - set(
                collections[spec.retrieval.collection].filters
            )
            if wanted:
                raise ConfigError(
                    f"topology {spec.name}: collection {spec.retrieval.collection!r} cannot "
                    f"filter on {', '.join(sorted(wanted))} (its filters: "
                    f"{', '.join(collections[spec.retrieval.collection].filters) or 'none'})"
                )
            tables.add(spec.retrieval.collection)
    topics = {table: settings.orgdata_topic(table) for table in sorted(tables)}
    if topics:
        ensure(
            settings.kafka_bootstrap_servers,
            topics.values(),
            settings.topic_partitions,
            settings.topic_replication_factor,
            COMPACTED,
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    documents: dict[str, Collection] = {t: collections[t] for t in tables if t in collections}
    store = OrgDataStore(settings.orgdata_file, documents)
    follower = Materializer(store, settings.kafka_bootstrap_servers, topics)
    if topics:
        follower.start()
        started = time.monotonic()
        while not follower.wait_ready(10.0):
            log.warning(
                "worker %s: org data not ready after %.0f s (%d records applied); waiting",
                settings.worker_id,
                time.monotonic() - started,
                follower.applied,
            )
        log.warning(
            "worker %s: org data ready in %.1f s, %d records read from the topics: %s",
            settings.worker_id,
            time.monotonic() - started,
            follower.applied,
            ", ".join(f"{t} {n}" for t, n in store.tables().items()) or "no records",
        )
    return store, follower

"""Publish org data to its table's compacted topic: what `llmflow orgdata load` does.

All or nothing: the records are checked (by `loader`), a collection's passages embedded,
and only then published, in one Kafka transaction. Workers read committed records only,
so they see the whole load or none of it; a load that fails midway leaves the topic as it
was. The transactional id is the table's, so a second load of the same table fences the
first instead of interleaving with it.

A collection's records, and every table under `full_sync`, are first compared with what
the topic holds: unchanged records are not published again (nor embedded again), and with
`full_sync` the keys the file no longer has get a tombstone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from kafka import KafkaProducer
from openai import AsyncOpenAI

from llmflow.services.broker.security import client_options
from llmflow.services.orgdata.changes import canonical_json
from llmflow.services.orgdata.documents import (
    CHUNKS_FIELD,
    Vector,
    document_text,
    passages_block,
    split_words,
)
from llmflow.services.orgdata.materializer import read_copy
from llmflow.services.orgdata.store import OrgDataError, OrgDataStore
from llmflow.topologies.collections import Collection

log = logging.getLogger(__name__)

EMBED_BATCH = 64
COMPACTED = {"cleanup.policy": "compact"}


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to publish."""

    bootstrap_servers: str
    topic: str
    partitions: int = 4
    replication_factor: int = 1
    max_record_bytes: int = 1_000_000


@dataclass(frozen=True, slots=True)
class LoadReport:
    table: str
    topic: str
    published: int
    unchanged: int
    deleted: int
    passages: int = 0
    embedding_tokens: int = 0

    def __str__(self) -> str:
        text = f"{self.table}: {self.published} records published to {self.topic}"
        extras = [f"{self.unchanged} unchanged"] if self.unchanged else []
        extras += [f"{self.deleted} deleted"] if self.deleted else []
        if self.passages:
            extras.append(f"{self.passages} passages embedded, {self.embedding_tokens} tokens")
        return text + (f" ({', '.join(extras)})" if extras else "")


def current_records(
    bootstrap_servers: str, table: str, topic: str, timeout_s: float = 300
) -> dict[str, Any]:
    """What a worker would hold for `table` now: key -> record data."""
    with read_copy(
        OrgDataStore(":memory:"),
        bootstrap_servers,
        {table: topic},
        timeout_s=timeout_s,
        client_id="llmflow-orgdata-load",
    ) as store:
        return {key: json.loads(text) for key, text in store.records(table).items()}


def publish_table(
    target: Target,
    table: str,
    records: list[dict[str, Any]],
    key_field: str = "id",
    *,
    collection: Collection | None = None,
    embedder: AsyncOpenAI | None = None,
    full_sync: bool = False,
) -> LoadReport:
    """Publish `records` (checked, one per key) to the table's topic in one transaction.
    The topic exists: the caller creates it, compacted (`COMPACTED`)."""
    existing: Mapping[str, Any] = {}
    if full_sync or collection is not None:
        existing = current_records(target.bootstrap_servers, table, target.topic)
    by_key = {str(record[key_field]): record for record in records}
    changed = {
        key: record
        for key, record in by_key.items()
        if key not in existing or canonical_json(existing[key]) != canonical_json(record)
    }
    gone = sorted(set(existing) - set(by_key)) if full_sync else []
    passages = tokens = 0
    values: dict[str, bytes] = {}
    if collection is not None and changed:
        if embedder is None:
            raise OrgDataError(
                f"{table} is a document collection: loading it needs an embedding model"
            )
        blocks, passages, tokens = asyncio.run(_embed(embedder, collection, changed))
        for key, record in changed.items():
            values[key] = canonical_json({**record, CHUNKS_FIELD: blocks[key]}).encode()
    else:
        values = {key: canonical_json(record).encode() for key, record in changed.items()}
    for key, value in values.items():
        if len(value) + len(key.encode()) > target.max_record_bytes - 4096:
            raise OrgDataError(
                f"{table} record {key!r} takes {len(value)} bytes as published, over what a "
                f"record may take (LLMFLOW_MAX_RECORD_BYTES={target.max_record_bytes})"
            )
    _publish(target, table, values, gone)
    return LoadReport(
        table, target.topic, len(values), len(by_key) - len(values), len(gone), passages, tokens
    )


def _publish(target: Target, table: str, values: Mapping[str, bytes], gone: list[str]) -> None:
    if not values and not gone:
        return
    producer = KafkaProducer(
        bootstrap_servers=target.bootstrap_servers,
        **client_options(),
        client_id="llmflow-orgdata-load",
        transactional_id=f"llmflow-orgdata-{table}",
        max_request_size=target.max_record_bytes,
        linger_ms=20,
        batch_size=512 * 1024,
        transaction_timeout_ms=900_000,
    )
    try:
        producer.init_transactions()
        producer.begin_transaction()
        try:
            for key, value in values.items():
                producer.send(target.topic, key=key.encode(), value=value)
            for key in gone:
                producer.send(target.topic, key=key.encode(), value=None)
            producer.commit_transaction()
        except BaseException:
            producer.abort_transaction()
            raise
    finally:
        producer.close()


async def _embed(
    client: AsyncOpenAI, collection: Collection, records: Mapping[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], int, int]:
    """The `_llmflow` block of every record, the passage count and the tokens paid."""
    texts = {
        key: split_words(
            document_text(record, collection), collection.chunk_words, collection.overlap_words
        )
        for key, record in records.items()
    }
    flat = [(key, text) for key, parts in texts.items() for text in parts]
    vectors: list[Vector] = []
    tokens = 0
    spec = collection.embedding
    try:
        for start in range(0, len(flat), EMBED_BATCH):
            batch = [text for _, text in flat[start : start + EMBED_BATCH]]
            response = await client.embeddings.create(
                model=spec.model, input=batch, dimensions=spec.dimensions
            )
            tokens += response.usage.prompt_tokens
            for item in sorted(response.data, key=lambda d: d.index):
                vectors.append(np.asarray(item.embedding, dtype=np.float32))
    finally:
        await client.close()
    by_key: dict[str, list[Vector]] = {key: [] for key in texts}
    for (key, _), vector in zip(flat, vectors, strict=True):
        if vector.shape != (spec.dimensions,):
            raise OrgDataError(
                f"{spec.model} returned {vector.size} values; the collection wants "
                f"{spec.dimensions}"
            )
        by_key[key].append(vector)
    blocks = {
        key: passages_block(spec.model, spec.dimensions, texts[key], by_key[key]) for key in texts
    }
    return blocks, len(flat), tokens

"""Org data as a worker holds it after a load was published: the records (and a
collection's passages, embedded by the simulator's function, as the loader would through
its endpoint) decoded and applied as the materializer does, without a broker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmflow.services.modelsim.answers import embedding_vector
from llmflow.services.orgdata.changes import Change, canonical_json, decode
from llmflow.services.orgdata.documents import (
    CHUNKS_FIELD,
    document_text,
    passages_block,
    split_words,
)
from llmflow.services.orgdata.store import OrgDataStore
from llmflow.topologies.collections import Collection


def published_value(record: dict[str, Any], collection: Collection | None = None) -> bytes:
    """The value `llmflow orgdata load` publishes for `record`."""
    if collection is None:
        return canonical_json(record).encode()
    spec = collection.embedding
    texts = split_words(
        document_text(record, collection), collection.chunk_words, collection.overlap_words
    )
    vectors = [
        np.asarray(embedding_vector(spec.model, text, spec.dimensions), dtype=np.float32)
        for text in texts
    ]
    block = passages_block(spec.model, spec.dimensions, texts, vectors)
    return canonical_json({**record, CHUNKS_FIELD: block}).encode()


def apply_records(
    store: OrgDataStore,
    table: str,
    records: Sequence[dict[str, Any]],
    key_field: str = "id",
    deletes: Sequence[str] = (),
    partition: int = 0,
) -> int:
    """Apply `records` (then tombstones for `deletes`) as the next offsets of `partition`."""
    start = store.positions(table).get(partition, 0)
    collection = store.collections.get(table)
    raw: list[tuple[bytes, bytes | None]] = [
        (str(r[key_field]).encode(), published_value(r, collection)) for r in records
    ]
    raw += [(key.encode(), None) for key in deletes]
    changes: list[tuple[int, Change]] = []
    for n, (key, value) in enumerate(raw):
        change = decode(key, value)
        assert change is not None
        changes.append((start + n, change))
    store.apply(table, partition, changes, start + len(raw))
    return len(records)

"""Passages of a document collection: how a record is split, and how its passages and
their embeddings travel inside the record's value (`_llmflow`), so that the loader embeds
once and every worker indexes the same vectors without calling a model.

    "_llmflow": {"model": "text-embedding-3-small", "dimensions": 256,
                 "passages": [{"text": "...", "vector": "<base64 of little-endian float32>"}]}
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from llmflow.topologies.collections import Collection

CHUNKS_FIELD = "_llmflow"
MAX_PASSAGES = 10_000

Vector = npt.NDArray[np.float32]


class BadPassages(ValueError):
    """The `_llmflow` block of a record is malformed."""


@dataclass(frozen=True, slots=True)
class Passage:
    n: int
    """Position in the record, from 0."""
    text: str
    vector: Vector | None
    """Unit-length embedding; None when the record came without (a CDC source)."""
    model: str | None = None


def document_text(record: dict[str, Any], collection: Collection) -> str:
    """The text of the record's `text_fields`, joined by a blank line."""
    parts = [record.get(field) for field in collection.text_fields]
    return "\n\n".join(str(part) for part in parts if part not in (None, ""))


def split_words(text: str, size: int, overlap: int) -> list[str]:
    """Windows of `size` words, each repeating the last `overlap` words of the one before."""
    words = text.split()
    if not words:
        return []
    step = size - overlap
    starts = range(0, max(len(words) - overlap, 1), step)
    return [" ".join(words[start : start + size]) for start in starts]


def passages_block(
    model: str, dimensions: int, texts: list[str], vectors: list[Vector]
) -> dict[str, Any]:
    """The `_llmflow` block the loader adds to a document's value."""
    return {
        "model": model,
        "dimensions": dimensions,
        "passages": [
            {"text": text, "vector": base64.b64encode(_unit(v).astype("<f4").tobytes()).decode()}
            for text, v in zip(texts, vectors, strict=True)
        ],
    }


def passages_of(block: Any) -> list[Passage]:
    """The passages of a `_llmflow` block; raises `BadPassages` naming what is wrong."""
    if not isinstance(block, dict):
        raise BadPassages(f"{CHUNKS_FIELD} must be an object")
    model, dimensions, items = block.get("model"), block.get("dimensions"), block.get("passages")
    if not isinstance(model, str) or not model:
        raise BadPassages(f"{CHUNKS_FIELD}.model must be a non-empty string")
    if (
        isinstance(dimensions, bool)
        or not isinstance(dimensions, int)
        or not 1 <= dimensions <= 4096
    ):
        raise BadPassages(f"{CHUNKS_FIELD}.dimensions must be an integer in 1..4096")
    if not isinstance(items, list) or len(items) > MAX_PASSAGES:
        raise BadPassages(f"{CHUNKS_FIELD}.passages must be a list of at most {MAX_PASSAGES}")
    passages = []
    for n, item in enumerate(items):
        text = item.get("text") if isinstance(item, dict) else None
        encoded = item.get("vector") if isinstance(item, dict) else None
        if not isinstance(text, str) or not isinstance(encoded, str):
            raise BadPassages(f"passage {n} needs a `text` and a base64 `vector`")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except ValueError as exc:
            raise BadPassages(f"passage {n}: the vector is not base64") from exc
        if len(raw) != 4 * dimensions:
            raise BadPassages(
                f"passage {n}: the vector has {len(raw) // 4} values, not {dimensions}"
            )
        vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(vector)):
            raise BadPassages(f"passage {n}: the vector holds NaN or infinity")
        passages.append(Passage(n, text, _unit(vector), model))
    return passages


def plain_passages(record: dict[str, Any], collection: Collection) -> list[Passage]:
    """Passages of a record that came without any (a CDC source): keyword search only."""
    texts = split_words(
        document_text(record, collection), collection.chunk_words, collection.overlap_words
    )
    return [Passage(n, text, None) for n, text in enumerate(texts)]


def _unit(vector: Any) -> Vector:
    array = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(array))
    return array / norm if norm > 0 else array

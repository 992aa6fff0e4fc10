"""Document collections: org-data tables whose records are split into passages, embedded
once when they are loaded, and searched by the topologies' `retrieval:` step.

Declared in a small YAML file (`collections.yaml` next to the shipped topologies, or the
file `LLMFLOW_COLLECTIONS_FILE` names), read by the loader, which chunks and embeds, and
by every worker, which indexes what the loader published.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmflow.errors import ConfigError

_NAME = r"^[a-z][a-z0-9_]*$"


class CollectionsError(ConfigError):
    """The collections file is invalid; the message names the file and the problem."""


class Embedding(BaseModel):
    """The model that embeds passages at load time and queries at retrieval time."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    model: str = Field(min_length=1)
    """Embedding model name as the endpoint knows it."""
    endpoint: str = Field(default="default", pattern=_NAME)
    """`default` (OPENAI_BASE_URL) or a named endpoint of the worker's settings."""
    dimensions: int = Field(default=256, ge=8, le=4096)
    """Vector size asked for (the `dimensions` parameter of the embeddings API)."""


class Collection(BaseModel):
    """An org-data table searched as documents."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str = Field(pattern=_NAME)
    """The org-data table (its topic is `<prefix><name>`)."""
    text_fields: list[str] = Field(default_factory=lambda: ["title", "text"], min_length=1)
    """Record fields whose text is split into passages, joined by a blank line."""
    chunk_words: int = Field(default=120, ge=8, le=2000)
    """Words per passage."""
    overlap_words: int = Field(default=30, ge=0)
    """Words a passage repeats from the one before, so an answer cut in two stays whole."""
    embedding: Embedding
    """How passages and queries are embedded."""
    filters: list[str] = Field(default_factory=list)
    """Record fields a `retrieval:` step may filter on (exact match)."""
    tenant_field: str | None = None
    """Record field naming the tenant a document belongs to; unset, documents are shared."""
    shared: bool = True
    """With `tenant_field`: documents without a tenant are seen by every tenant."""

    @model_validator(mode="after")
    def _consistent(self) -> Collection:
        if self.overlap_words >= self.chunk_words:
            raise ValueError("overlap_words must be smaller than chunk_words")
        for field in [*self.filters, *([self.tenant_field] if self.tenant_field else [])]:
            if not field.isidentifier():
                raise ValueError(f"field name {field!r} must be an identifier")
        return self


def default_collections_file() -> Path:
    return Path(str(resources.files("llmflow.topologies") / "collections.yaml"))


def load_collections(path: Path | str | None = None) -> dict[str, Collection]:
    """The collections of `path` (default: the shipped file) by name."""
    path = Path(path) if path else default_collections_file()
    try:
        data: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CollectionsError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise CollectionsError(f"{path}: YAML error: {exc}") from exc
    entries = data.get("collections") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise CollectionsError(f"{path}: expected a mapping `collections: {{name: ...}}`")
    collections: dict[str, Collection] = {}
    for name, spec in entries.items():
        try:
            collections[name] = Collection.model_validate({"name": name, **(spec or {})})
        except (ValidationError, TypeError) as exc:
            raise CollectionsError(f"{path}: collection {name!r}: {exc}") from exc
    return collections

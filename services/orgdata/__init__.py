"""Organisational reference data for enrichment, kept in SQLite (no server needed)."""

from llmflow.services.orgdata.loader import load_file, load_samples
from llmflow.services.orgdata.store import (
    OrgDataError,
    OrgDataStore,
    OrgRecord,
    record_version,
    validate_table,
)

__all__ = [
    "OrgDataError",
    "OrgDataStore",
    "OrgRecord",
    "load_file",
    "load_samples",
    "record_version",
    "validate_table",
]

"""Organisational data: compacted Kafka topics are the source of truth (`publish`), and
every worker keeps its own live, indexed copy (`materializer` -> `store`, `search`)."""

from llmflow.services.orgdata.loader import read_records, sample_records
from llmflow.services.orgdata.materializer import Materializer
from llmflow.services.orgdata.publish import LoadReport, Target, publish_table
from llmflow.services.orgdata.search import Hit, Retriever
from llmflow.services.orgdata.store import OrgDataError, OrgDataStore, OrgRecord, validate_table

__all__ = [
    "Hit",
    "LoadReport",
    "Materializer",
    "OrgDataError",
    "OrgDataStore",
    "OrgRecord",
    "Retriever",
    "Target",
    "publish_table",
    "read_records",
    "sample_records",
    "validate_table",
]

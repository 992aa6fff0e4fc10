"""The public surface is small and changes only on purpose: a name added to or dropped
from a public module's `__all__` fails here until this list says so."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import llmflow

PUBLIC: dict[str, list[str]] = {
    "llmflow": [
        "DeadLetter",
        "EventProducer",
        "ImageEvent",
        "ImageRef",
        "LlmflowError",
        "ModelCallResult",
        "Output",
        "Parked",
        "Result",
        "ResultConsumer",
        "TextEvent",
        "TextImageEvent",
        "__version__",
        "image_event",
        "parse_event",
        "parse_result",
        "text_event",
        "text_image_event",
    ],
    "llmflow.schemas": [
        "CallLineage",
        "DeadLetter",
        "Event",
        "ImageEvent",
        "ImageInfo",
        "ImageRef",
        "ModelCallResult",
        "OrgRecordRef",
        "Output",
        "Parked",
        "Projection",
        "Result",
        "Stage",
        "TextEvent",
        "TextImageEvent",
        "Totals",
        "parse_event",
    ],
    "llmflow.topologies": [
        "Enrichment",
        "ModelCall",
        "Prompt",
        "Topology",
        "TopologyError",
        "load_topology",
    ],
    "llmflow.services.sdk": [
        "EventProducer",
        "ResultConsumer",
        "image_event",
        "image_ref",
        "parse_result",
        "text_event",
        "text_image_event",
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_module_exports_exactly_these_names(module: str) -> None:
    exported = importlib.import_module(module).__all__
    assert sorted(exported) == PUBLIC[module]


def test_every_declared_export_exists() -> None:
    modules = [
        info.name
        for info in pkgutil.walk_packages(llmflow.__path__, "llmflow.")
        if not info.name.endswith("__main__")
    ]
    assert "llmflow.services.worker.pipeline" in modules
    for name in modules:
        module = importlib.import_module(name)
        for export in getattr(module, "__all__", []):
            assert hasattr(module, export), f"{name}.__all__ names {export!r}, which is missing"


def test_the_root_reexports_the_same_objects() -> None:
    for name in PUBLIC["llmflow"]:
        if name != "__version__":
            assert getattr(llmflow, name) is not None
    assert llmflow.Output is importlib.import_module("llmflow.schemas").Output
    assert llmflow.EventProducer is importlib.import_module("llmflow.services.sdk").EventProducer

"""Declared LLM pipelines: YAML files validated by `topologies.spec.Topology`."""

from llmflow.topologies.loader import TopologyError, load_topology
from llmflow.topologies.spec import Enrichment, ModelCall, Prompt, Topology

__all__ = ["Enrichment", "ModelCall", "Prompt", "Topology", "TopologyError", "load_topology"]

"""OpenAI-compatible model SIMULATOR for demos, integration tests and benchmarks.

Answers are deterministic functions of the request, so runs are reproducible without a
real model; faults (429, 500, slow answers) and latency are injected on demand.
"""

from llmflow.services.modelsim.config import SimulatorConfig
from llmflow.services.modelsim.server import make_app

__all__ = ["SimulatorConfig", "make_app"]

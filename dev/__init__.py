"""Development tooling: the demo, child-process launching for tests and benchmarks, sample
data and the benchmarks themselves.

Runs from a checkout only (`python -m dev.demo`, `python -m dev.bench.run`, the tests) and
is not shipped: the wheel holds `llmflow` alone, and shipped code never imports `dev`.
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The checkout: the shipped topologies are read from `PROJECT_ROOT / "topologies"`."""

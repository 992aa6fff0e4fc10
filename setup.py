"""Refuses to build from a tree whose links were flattened (configuration: pyproject.toml).

`llmflow/schemas`, `llmflow/topologies` and `llmflow/services` are links to the top-level
folders. An archive unpacked without symlinks turns them into small text files, and the
wheel would silently hold nothing but `llmflow/__init__.py`.
"""

from pathlib import Path

from setuptools import setup

here = Path(__file__).parent
for name in ("schemas", "topologies", "services"):
    if not (here / "llmflow" / name / "__init__.py").is_file():
        raise SystemExit(
            f"llmflow/{name} is not a link to ../{name}: build from a git clone or the sdist"
        )

setup()

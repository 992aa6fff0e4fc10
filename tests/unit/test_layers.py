"""Imports point one way, down the data flow: contracts <- topologies <- components <- worker
<- replay and compare <- command line. A module may import its own component and the layers
below it, never a peer component of its own layer nor anything above; shipped code never
imports `dev` or `tests`."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import llmflow

# Bottom to top; the components within one layer are independent of each other.
LAYERS: list[set[str]] = [
    {"llmflow.errors", "llmflow.logs"},
    {"llmflow.schemas"},
    {"llmflow.topologies"},
    {"llmflow.services.broker"},  # how every client reaches Kafka (security, topics)
    {
        "llmflow.services.models",
        "llmflow.services.images",
        "llmflow.services.orgdata",
        "llmflow.services.sdk",
    },
    {"llmflow.services.worker", "llmflow.services.modelsim"},
    # replay and compare run the worker's pipeline on a candidate; the gateway takes the
    # worker's readiness checks
    {"llmflow.services.shadow", "llmflow.services.gateway"},
    {"llmflow.services.cli", "llmflow"},
]
ROOT = "llmflow"  # the public surface: the root module alone, not everything below it
NOT_SHIPPED = ("dev", "tests")
CONTAINERS = {"llmflow.services"}  # a folder of components, with no code of its own


def component_of(module: str) -> str | None:
    """The longest component name that is `module` or one of its parents."""
    matches = [
        c
        for layer in LAYERS
        for c in layer
        if module == c or (c != ROOT and module.startswith(c + "."))
    ]
    return max(matches, key=len, default=None)


def layer_of(component: str) -> int:
    return next(n for n, layer in enumerate(LAYERS) if component in layer)


def violations(imports: dict[str, set[str]]) -> list[str]:
    """Every import of `imports` (module -> modules it imports) that points the wrong way."""
    found = []
    for module, targets in sorted(imports.items()):
        source = component_of(module)
        if source is None and module not in CONTAINERS:
            found.append(f"{module} belongs to no layer (add it to LAYERS)")
            continue
        for target in sorted(targets):
            if target.split(".")[0] in NOT_SHIPPED:
                found.append(f"{module} imports {target}, which is not shipped")
                continue
            wanted = component_of(target)
            if wanted is None or wanted == source:
                continue  # third-party, standard library, or its own component
            if source is None or layer_of(wanted) >= layer_of(source):
                found.append(f"{module} ({source}) imports {target} ({wanted}): not below it")
    return found


def _modules(root: Path) -> Iterator[tuple[str, Path]]:
    # The subpackages are links to the top-level folders: follow them.
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                parts = Path(folder, name).relative_to(root.parent).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                yield ".".join(parts), Path(folder, name)


def _imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):  # lazy imports inside functions count too
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from llmflow import schemas` imports the subpackage, not the root.
            found.update(
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            )
    return found


def project_imports() -> dict[str, set[str]]:
    root = Path(llmflow.__file__).parent
    modules = dict(_modules(root))
    known = set(modules)
    return {name: _imports_of(name, path, known) for name, path in modules.items()}


def test_every_import_points_down() -> None:
    imports = project_imports()
    assert len(imports) > 40, "the walk must see the linked subpackages"
    assert violations(imports) == []


@pytest.mark.parametrize(
    ("module", "target"),
    [
        ("llmflow.schemas.events", "llmflow.services.worker.pipeline"),  # contracts -> worker
        ("llmflow.topologies.spec", "llmflow.services.models.structured"),  # -> model layer
        ("llmflow.services.images.fetch", "llmflow.services.orgdata.store"),  # peer component
        ("llmflow.services.worker.app", "llmflow.services.cli"),  # worker -> command line
        ("llmflow.services.worker.app", "dev.launch"),  # shipped -> not shipped
    ],
)
def test_an_upward_import_is_reported(module: str, target: str) -> None:
    found = violations({module: {target}})
    assert len(found) == 1 and module in found[0] and target in found[0]


def test_a_downward_import_is_allowed() -> None:
    assert violations({"llmflow.services.worker.app": {"llmflow.topologies.spec"}}) == []


def test_a_module_outside_every_layer_is_reported() -> None:
    assert violations({"llmflow.plugins.x": {"llmflow.schemas"}}) == [
        "llmflow.plugins.x belongs to no layer (add it to LAYERS)"
    ]

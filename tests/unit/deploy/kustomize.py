"""Render deploy/k8s without a cluster: `kubectl kustomize` (or `kustomize build`) when one
is on PATH, else a reader of the few kustomize features deploy/k8s uses. The reader refuses
any other feature, and `test_the_reader_agrees_with_kustomize` holds the two to the same
output wherever both run, so the checks never rest on a reader that guesses."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Object = dict[str, Any]

# The kustomization fields the reader understands; any other one stops it.
KNOWN_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "configMapGenerator"}
KNOWN_GENERATOR_FIELDS = {"name", "behavior", "files", "envs", "literals"}


class UnsupportedKustomization(ValueError):
    """The kustomization uses a feature the reader does not implement."""


def kustomize_command() -> list[str] | None:
    """The kustomize on this machine: standalone, or built into kubectl; None without one."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def build_with_kustomize(root: Path, command: list[str]) -> list[Object]:
    done = subprocess.run(
        [*command, str(root)], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} {root}: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def build(root: Path) -> list[Object]:
    """The objects `kustomize build root` prints, without the hash suffixes of generated
    ConfigMap names (the references to them use the same bare names)."""
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN_FIELDS
    if unknown:
        raise UnsupportedKustomization(f"{root}: {', '.join(sorted(unknown))}")
    objects: list[Object] = []
    for entry in kustomization.get("resources", []):
        path = root / entry
        if path.is_dir():
            objects += build(path)
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for generator in kustomization.get("configMapGenerator", []):
        _generate(root, generator, objects)
    for image in kustomization.get("images", []):
        for container in containers(objects):
            _set_image(container, image)
    if "namespace" in kustomization:
        for obj in objects:
            obj["metadata"]["namespace"] = kustomization["namespace"]
    return objects


def _generate(root: Path, generator: Object, objects: list[Object]) -> None:
    unknown = set(generator) - KNOWN_GENERATOR_FIELDS
    if unknown:
        raise UnsupportedKustomization(f"{root}: configMapGenerator {', '.join(sorted(unknown))}")
    data: dict[str, str] = {}
    for entry in generator.get("files", []):
        key, _, source = entry.rpartition("=")
        data[key or Path(source).name] = (root / source).read_text()
    for source in generator.get("envs", []):
        data |= parse_env((root / source).read_text())
    data |= parse_env("\n".join(generator.get("literals", [])))
    name = generator["name"]
    behavior = generator.get("behavior", "create")
    existing = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name]
    if behavior == "create":
        if existing:
            raise UnsupportedKustomization(f"{root}: ConfigMap {name} exists already")
        objects.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
        )
    elif behavior in ("merge", "replace") and len(existing) == 1:
        merged = existing[0]["data"] if behavior == "merge" else {}
        existing[0]["data"] = merged | data
    else:
        raise UnsupportedKustomization(f"{root}: configMapGenerator {name}: {behavior}")


def parse_env(text: str) -> dict[str, str]:
    """KEY=value lines as kustomize reads an env file: no quotes removed, `#` lines and blank
    lines skipped."""
    pairs = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UnsupportedKustomization(f"not KEY=value: {line!r}")
        pairs[key] = value
    return pairs


def _set_image(container: Object, image: Object) -> None:
    name, tag = _split_image(container["image"])
    if name != image["name"]:
        return
    name = image.get("newName", name)
    tag = f":{image['newTag']}" if "newTag" in image else tag
    container["image"] = f"{name}{tag}"


def _split_image(reference: str) -> tuple[str, str]:
    """`registry:5000/name:tag@digest` -> (`registry:5000/name`, `:tag@digest`)."""
    path, slash, last = reference.rpartition("/")
    match = re.fullmatch(r"([^:@]+)(.*)", last)
    assert match is not None, reference
    return f"{path}{slash}{match.group(1)}", match.group(2)


def pod_spec(obj: Object) -> Object | None:
    """The pod template's spec of a workload (Deployment, Job, ...); None for the others."""
    template = obj.get("spec", {}).get("template")
    return template["spec"] if template else None


def containers(objects: list[Object]) -> list[Object]:
    found = []
    for obj in objects:
        spec = pod_spec(obj)
        if spec:
            found += spec.get("initContainers", []) + spec["containers"]
    return found


def strip_generated_suffixes(objects: list[Object], generated: set[str]) -> list[Object]:
    """kustomize's output with `name-<hash>` written back as `name` for generated names."""
    if not generated:
        return copy.deepcopy(objects)
    names = "|".join(re.escape(n) for n in sorted(generated, key=len, reverse=True))
    pattern = re.compile(rf"\b({names})-[a-z0-9]{{10}}\b")
    text = yaml.safe_dump_all(objects, sort_keys=True)
    return [doc for doc in yaml.safe_load_all(pattern.sub(r"\1", text)) if doc]

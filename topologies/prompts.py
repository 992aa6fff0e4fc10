"""Prompt templates: sandboxed Jinja2 that fails loudly on a missing variable."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Sandboxed: templates come from topology files, which are configuration, not code.
_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


@lru_cache(maxsize=1024)
def compile_template(source: str) -> Template:
    return _ENV.from_string(source)


def render(source: str, context: dict[str, Any]) -> str:
    """Render a template; raises jinja2.UndefinedError when it names a missing variable."""
    return compile_template(source).render(context).strip()

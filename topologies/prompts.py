"""Prompt templates: sandboxed Jinja2 that fails loudly on a missing variable."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined, StrictUndefined, Template, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Sandboxed: templates come from topology files, which are configuration, not code.
_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
# A route's condition: a name the event or an answer lacks is undefined (false), since the
# output is done by then and must not fail for want of a field.
_LENIENT = ImmutableSandboxedEnvironment(undefined=ChainableUndefined, autoescape=False)


@lru_cache(maxsize=1024)
def compile_template(source: str) -> Template:
    return _ENV.from_string(source)


@lru_cache(maxsize=1024)
def compile_condition(source: str) -> Callable[..., Any]:
    """A `when:` condition: one Jinja expression, in the same sandbox."""
    return _ENV.compile_expression(source, undefined_to_none=False)


def condition_template(condition: str) -> str:
    """The condition as a template, for the checks made on templates."""
    return "{{ (" + condition + ") }}"


@lru_cache(maxsize=1024)
def _lenient_condition(source: str) -> Callable[..., Any]:
    return _LENIENT.compile_expression(source, undefined_to_none=False)


def holds(condition: str, context: dict[str, Any], *, lenient: bool = False) -> bool:
    """Whether the condition is true in `context`; raises jinja2 errors as `render` does
    (`lenient`: a missing name is undefined, and false, instead)."""
    compiled = _lenient_condition(condition) if lenient else compile_condition(condition)
    return bool(compiled(**context))


def render(source: str, context: dict[str, Any]) -> str:
    """Render a template; raises jinja2.UndefinedError when it names a missing variable."""
    return compile_template(source).render(context).strip()


VariablePath = tuple[str | int, ...]


def variable_paths(source: str) -> list[VariablePath]:
    """Each use of a variable the context must provide, in order: its name, then the constant
    attributes and items taken from it (`event.images[0].url` -> `("event", "images", 0,
    "url")`). Names the template binds itself (`for`, `set`, macros) and the environment's
    globals (`range`, ...) are left out. Raises jinja2.TemplateSyntaxError."""
    ast = _ENV.parse(source)
    free = meta.find_undeclared_variables(ast) - set(_ENV.globals)
    # A name both bound and free (shadowed in a loop): only the name itself is certain.
    bound = {name.name for name in ast.find_all(nodes.Name) if name.ctx != "load"}
    found: list[VariablePath] = []
    _collect(ast, found)
    return [path[:1] if path[0] in bound else path for path in found if path[0] in free]


def _collect(node: nodes.Node, found: list[VariablePath]) -> None:
    parts: list[str | int] = []  # innermost last
    while isinstance(node, nodes.Getattr | nodes.Getitem):
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
        elif isinstance(node.arg, nodes.Const) and type(node.arg.value) in (str, int):
            parts.append(node.arg.value)
        else:  # `x[y].z`: what follows a computed item is not known here
            parts.clear()
            _collect(node.arg, found)
        node = node.node
    if isinstance(node, nodes.Name):
        if node.ctx == "load":
            found.append((node.name, *reversed(parts)))
        return
    for child in node.iter_child_nodes():
        _collect(child, found)

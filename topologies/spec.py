"""The topology model: what a YAML pipeline may declare, checked before any event flows."""

from __future__ import annotations

import hashlib
import re
import types
from contextvars import ContextVar
from graphlib import CycleError, TopologicalSorter
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from jinja2 import TemplateSyntaxError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llmflow.schemas.events import ImageEvent, TextEvent, TextImageEvent
from llmflow.schemas.outputs import ModelCallResult, OrgRecordRef, Output
from llmflow.topologies.output_schemas import InvalidSchema, check_schema, schema_of_output_model
from llmflow.topologies.prompts import (
    VariablePath,
    compile_condition,
    compile_template,
    condition_template,
    variable_paths,
)

_NAME = r"^[a-z][a-z0-9_]*$"
_TOPIC = r"^[A-Za-z0-9._-]{1,249}$"
EventKind = Literal["text", "image", "text_image"]

# Context key of a validation error that lies inside a field's value: the path below the
# field, so the loader can point at the offending line of the file (see `loader`).
WITHIN = "within"


# What a template may name, as `services/worker/pipeline.py` renders it: the event as JSON,
# the org record's data (free-form), which record it was (or nothing), the passages found,
# and the results of the calls a call `needs` (see `Topology._steps_consistent`).
_EVENTS: dict[str, type[BaseModel]] = {
    "text": TextEvent,
    "image": ImageEvent,
    "text_image": TextImageEvent,
}
_CONTEXT = ("event", "org", "record", "docs", "calls")
_DICT_METHODS = frozenset(name for name in dir(dict) if not name.startswith("_"))
# The kinds the topology being validated accepts; none known (a prompt alone): all kinds.
_ACCEPTED: ContextVar[tuple[str, ...]] = ContextVar("accepted_kinds", default=())


def _options(annotation: Any) -> list[Any]:
    """The types a value of `annotation` may have, None aside."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _options(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [t for arg in get_args(annotation) if arg is not type(None) for t in _options(arg)]
    return [annotation]


def _first_unknown(path: VariablePath, options: list[Any]) -> tuple[int, list[Any]] | None:
    """Where `path` (below a variable of one of the types `options`) names what no option
    has: the index of that part and the models that lack it. None when it may exist."""
    for index, part in enumerate(path):
        following: list[Any] = []
        lacking: list[Any] = []
        for option in options:
            if isinstance(option, type) and issubclass(option, BaseModel):
                if isinstance(part, str) and part in option.model_fields:
                    following += _options(option.model_fields[part].annotation)
                elif part in _DICT_METHODS:  # rendered as a dict: `event.get("text")`
                    return None
                else:
                    lacking.append(option)
            elif get_origin(option) is list and isinstance(part, int):
                following += _options(get_args(option)[0])
            else:  # free-form: strings, dicts of strings, list methods, org data
                return None
        if not following:
            return index, lacking
        options = following
    return None


def _shown(path: VariablePath) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)[1:]


def _variable_problem(path: VariablePath, accepted: tuple[str, ...]) -> str | None:
    """Why `path` names nothing the rendering context has; None when it may."""
    name, below = path[0], path[1:]
    if name not in _CONTEXT:
        return f"unknown variable {name!r} (variables: {', '.join(_CONTEXT)})"
    if name in ("org", "docs"):
        return None
    if name == "calls":  # which calls: checked by the topology, against `needs`
        if len(below) < 1 or not isinstance(below[0], str):
            return "`calls` takes a call's name: calls.<name>.answer"
        unknown_field = _first_unknown(below[1:], [ModelCallResult])
        if unknown_field is None:
            return None
        shown = _shown(path[: unknown_field[0] + 3])
        known = ", ".join(sorted(ModelCallResult.model_fields))
        return f"unknown variable {shown!r} (a call's result has: {known})"
    events = [_EVENTS[kind] for kind in accepted or tuple(_EVENTS)]
    unknown = _first_unknown(below, list(events) if name == "event" else [OrgRecordRef])
    if unknown is None:
        return None
    index, lacking = unknown
    shown = _shown(path[: index + 2])
    others = [kind for kind, model in _EVENTS.items() if below[0] in model.model_fields]
    if name == "event" and index == 0 and others:
        kinds, accepts = ", ".join(others), ", ".join(accepted)
        return f"unknown variable {shown!r} (only {kinds} events have it; accepted: {accepts})"
    fields = sorted({field for model in lacking for field in model.model_fields})
    return f"unknown variable {shown!r} ({_shown(path[: index + 1])} fields: {', '.join(fields)})"


def _check_variables(template: str) -> None:
    accepted = _ACCEPTED.get()
    problems = [_variable_problem(path, accepted) for path in variable_paths(template)]
    unique = list(dict.fromkeys(problem for problem in problems if problem))
    if unique:
        raise PydanticCustomError("template_variable", "{problem}", {"problem": "; ".join(unique)})


def _checked_template(template: str) -> str:
    try:
        compile_template(template)
    except TemplateSyntaxError as exc:
        raise ValueError(f"template error on its line {exc.lineno}: {exc.message}") from exc
    _check_variables(template)
    return template


def _checked_condition(condition: str) -> str:
    try:
        compile_condition(condition)
    except TemplateSyntaxError as exc:
        raise ValueError(f"condition error: {exc.message}") from exc
    _check_variables(condition_template(condition))
    return condition


def called(template: str) -> set[str]:
    """The calls whose results `template` names (`calls.<name>...`)."""
    return {
        str(path[1]) for path in variable_paths(template) if path[0] == "calls" and len(path) > 1
    }


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Prompt(_Spec):
    """A versioned prompt. Templates are Jinja2 with `event` (the event as JSON), `org` (the
    org record's data), `record` (`table`, `key`, `version`, `offset` of that record) and
    `docs` (the passages the retrieval step found: `id`, `key`, `text`, `score`, `record`)
    in scope; naming anything else, or a field no accepted kind of event has, is an error."""

    version: str = Field(min_length=1)
    """Bumped whenever the wording changes; recorded in every output."""
    system: str | None = None
    """Optional system message template."""
    user: str = Field(min_length=1)
    """User message template (for embeddings: the text to embed)."""

    @field_validator("system", "user")
    @classmethod
    def _compiles(cls, template: str | None) -> str | None:
        return _checked_template(template) if template is not None else None


class Target(_Spec):
    """A model at an endpoint; `default` is OPENAI_BASE_URL, others are named in settings."""

    model: str = Field(min_length=1)
    """Model name as the endpoint knows it."""
    endpoint: str = Field(default="default", pattern=_NAME)
    """Endpoint of the model: `default` (OPENAI_BASE_URL) or one named in settings."""

    @property
    def key(self) -> str:
        return f"{self.endpoint}/{self.model}"


class ModelCall(_Spec):
    """One model call. A topology's calls run as a graph: each as soon as the calls it
    `needs` have answered, all that can run at once concurrently."""

    name: str = Field(pattern=_NAME)
    """Name of the call, unique within the topology; outputs are keyed by it."""
    needs: list[str] = Field(default_factory=list)
    """Calls whose results this one's templates and condition use, as
    `calls.<name>.answer`; it runs after they have answered."""
    when: str | None = None
    """A condition (a Jinja expression over `event`, `org`, `record`, `docs` and `calls`,
    e.g. `calls.classify.answer.priority in ['high', 'urgent']`): when false, the call is
    skipped, costs nothing and is listed in the output's `skipped`, as are the calls that
    need it."""
    kind: Literal["chat", "vision", "embedding"] = "chat"
    """`vision` attaches the event's prepared images to the user message."""
    model: str = Field(min_length=1)
    """Model name as the endpoint knows it."""
    endpoint: str = Field(default="default", pattern=_NAME)
    """Endpoint of the model: `default` (OPENAI_BASE_URL) or one named in settings."""
    fallbacks: list[Target] = Field(default_factory=list)
    """Tried in order when the model fails for good or its circuit is open."""
    prompt: Prompt
    """The prompt rendered for every event."""
    temperature: float | None = Field(default=None, ge=0, le=2)
    """Sampling temperature; unset, the endpoint's default."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Cap on the answer's tokens; unset, the endpoint's default (quotas then assume 256)."""
    output_schema: dict[str, Any] | None = None
    """JSON Schema (2020-12) of the answer; the call then asks for structured output and
    parses it."""
    dimensions: int | None = Field(default=None, ge=1, le=4096)
    """Embedding calls: the vector size to ask for (models that support shortening)."""
    output_model: str | None = Field(default=None, pattern=r"^[\w.]+:\w+$")
    """Instead of `output_schema`: `package.module:Class` of a pydantic model whose JSON
    schema the answer must follow."""

    @model_validator(mode="before")
    @classmethod
    def _schema_from_model(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("output_model"):
            return data
        if data.get("output_schema") is not None:
            raise ValueError("give output_schema or output_model, not both")
        return {**data, "output_schema": schema_of_output_model(str(data["output_model"]))}

    @field_validator("output_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            try:
                check_schema(schema)
            except InvalidSchema as exc:
                raise PydanticCustomError(
                    "json_schema",
                    "not a valid JSON Schema (2020-12): {problem}",
                    {"problem": exc.message, WITHIN: exc.path},
                ) from exc
        return schema

    @property
    def targets(self) -> list[Target]:
        """The primary model first, then the fallbacks."""
        return [Target(model=self.model, endpoint=self.endpoint), *self.fallbacks]

    @field_validator("when")
    @classmethod
    def _condition_compiles(cls, condition: str | None) -> str | None:
        return _checked_condition(condition) if condition is not None else None

    @property
    def templates(self) -> list[str]:
        """Its templates and condition, each as a template."""
        found = [self.prompt.user, *([self.prompt.system] if self.prompt.system else [])]
        return found + ([condition_template(self.when)] if self.when is not None else [])

    @model_validator(mode="after")
    def _fits_kind(self) -> ModelCall:
        if self.kind == "embedding" and (self.output_schema or self.prompt.system):
            raise ValueError("an embedding call takes neither output_schema nor a system prompt")
        if self.dimensions is not None and self.kind != "embedding":
            raise ValueError("dimensions applies to embedding calls only")
        if self.output_schema is not None and self.output_schema.get("type") != "object":
            raise ValueError("output_schema must describe a JSON object (type: object)")
        return self


class Enrichment(_Spec):
    """Which org-data record to attach to each event."""

    table: str = Field(pattern=_NAME)
    """Org-data table, e.g. `customers`."""
    key_from: Literal["key", "source"] = "key"
    """Event field holding the record key."""
    required: bool = False
    """When true, an event without a matching record becomes a dead letter (stage `enrich`)."""


class Retrieval(_Spec):
    """Passages of a document collection to put in the prompts' context as `docs`."""

    collection: str = Field(pattern=_NAME)
    """A collection of the collections file (`LLMFLOW_COLLECTIONS_FILE`)."""
    query: str = Field(min_length=1)
    """Template of the text to search for (the variables of a prompt; `docs` is still
    empty here)."""
    top_k: int = Field(default=3, ge=1, le=50)
    """How many passages to retrieve."""
    mode: Literal["keyword", "vector", "hybrid"] = "hybrid"
    """`keyword` (BM25), `vector` (cosine of embeddings) or `hybrid` (both, fused by rank);
    `vector` and `hybrid` embed the query: a model call, paid once per event like any other."""
    filters: dict[str, str] = Field(default_factory=dict)
    """Field -> template of the value a passage's record must have, e.g.
    `{language: "{{ org.language }}"}`; the field must be one the collection filters on."""
    version: str = Field(default="1", min_length=1)
    """Bumped when the query changes; part of the query embedding's pay-once key."""

    @field_validator("query")
    @classmethod
    def _query_compiles(cls, template: str) -> str:
        return _checked_template(template)

    @field_validator("filters")
    @classmethod
    def _filters_compile(cls, filters: dict[str, str]) -> dict[str, str]:
        for field, template in filters.items():
            if not field.isidentifier():
                raise ValueError(f"filter field {field!r} must be an identifier")
            _checked_template(template)
        return filters


class Route(_Spec):
    """A further topic that also gets the output of the events a condition picks."""

    name: str = Field(pattern=_NAME)
    """Names the route in metrics and in the output's `routes`."""
    topic: str = Field(pattern=_TOPIC)
    """Where the output goes too (the same record, with the header `llmflow.route`)."""
    when: str | None = None
    """A condition (a Jinja expression over `event`, `org`, `record`, `docs` and `calls`,
    the results of every call that ran); unset, every output goes. A name the event or an
    answer lacks counts as undefined: the condition is false, not an error."""

    fields: dict[str, str] | None = None
    """Send a projection instead of the whole output: name -> dotted path into the output,
    e.g. `{priority: calls.classify.answer.priority, summary: calls.summarize.answer}`
    (`calls.<name>` is that call's result). The projection keeps the event's identity and
    every call's lineage; unset, the route gets the whole output."""

    @field_validator("when")
    @classmethod
    def _condition_compiles(cls, condition: str | None) -> str | None:
        return _checked_condition(condition) if condition is not None else None

    @field_validator("fields")
    @classmethod
    def _paths_name_output_fields(cls, fields: dict[str, str] | None) -> dict[str, str] | None:
        if fields is None:
            return None
        if not fields:
            raise ValueError("name at least one field, or leave `fields` out")
        for name, path in fields.items():
            parts = path.split(".")
            if not name.isidentifier():
                raise ValueError(f"field name {name!r} must be an identifier")
            if not all(parts) or parts[0] not in PROJECTABLE:
                raise ValueError(
                    f"{name}: {path!r} must be a dotted path starting with one of "
                    f"{', '.join(sorted(PROJECTABLE))}"
                )
            if parts[0] == "calls" and len(parts) < 2:
                raise ValueError(f"{name}: {path!r} must name a call (calls.<name>...)")
        return fields


PROJECTABLE = frozenset(set(Output.model_fields) - {"record_type", "schema_version"})
"""What a route's `fields` may start with: the output's fields."""


class Shadow(_Spec):
    """A candidate version the worker also runs, on a sampled share of the live events, into
    a shadow topic: on its own (the live version never waits for it), never writing to the
    live topics, spending within its own budget."""

    topology: str = Field(min_length=1)
    """The candidate's topology file, relative to this one's; same name and input topic."""
    share: float = Field(gt=0, le=1)
    """Share of the events it runs on (0.05: one in twenty), picked by the event's bytes,
    so a redelivered event is picked again."""
    budget_usd: float | None = Field(default=None, ge=0)
    """What the whole group may spend on it per `period`; unset, no limit. Past it, events
    are not shadowed until the next period."""
    period: Literal["hour", "day", "month"] = "day"
    """Calendar period (UTC) of `budget_usd`."""
    topic: str | None = Field(default=None, pattern=_TOPIC)
    """Where its results go; unset, `<output_topic>.shadow.<candidate version>`."""
    max_in_flight: int = Field(default=20, ge=1, le=5000)
    """Shadowed events running at once per worker; one picked while all run is not shadowed
    (the live version never waits for its shadow)."""


class ImageOptions(_Spec):
    """How this topology prepares images before vision calls."""

    max_side: int = Field(default=1024, ge=64, le=4096)
    """Downscale so the longer side is at most this many pixels."""
    max_pixels: int = Field(default=40_000_000, ge=4096)
    """Refuse images with more pixels than this (decompression bombs)."""


class Topology(_Spec):
    """A declared pipeline: input topic -> enrich -> retrieve -> a graph of model calls ->
    output topic (and the routes' topics)."""

    name: str = Field(pattern=_NAME)
    """Unique among the topologies of a worker group; names its agent and state tables."""
    version: str = Field(min_length=1)
    """Bumped with every change to the topology; recorded in every output."""
    description: str = ""
    """What the topology is for, for people."""
    input_topic: str = Field(pattern=_TOPIC)
    """Topic of the events to answer."""
    output_topic: str = Field(pattern=_TOPIC)
    """Topic of the outputs, one per answered event."""
    dead_letter_topic: str = Field(pattern=_TOPIC)
    """Topic of the events that could not be answered, with the stage that failed."""
    parked_topic: str | None = Field(default=None, pattern=_TOPIC)
    """Where events of tenants over budget wait; defaults to `<input_topic>.parked`."""
    accepts: list[EventKind] = Field(min_length=1)
    """Event kinds this topology answers; any other kind is dead-lettered (stage `route`)."""
    enrichment: Enrichment | None = None
    """The org-data record to attach to each event; unset, none."""
    retrieval: Retrieval | None = None
    """Passages to retrieve for each event (after enrichment); unset, none."""
    images: ImageOptions = ImageOptions()
    """How images are prepared before vision calls."""
    calls: list[ModelCall] = Field(min_length=1)
    """The model calls, run as their `needs` allow; the output lists them in this order."""
    routes: list[Route] = Field(default_factory=list)
    """Further topics for the outputs their conditions pick (e.g. urgent tickets)."""
    shadow: Shadow | None = None
    """A candidate to run beside this version on a share of the events (see `Shadow`)."""
    _candidate: Topology | None = PrivateAttr(default=None)

    @property
    def candidate(self) -> Topology | None:
        """The shadow's topology, as the loader read it (None: no shadow)."""
        return self._candidate

    def with_candidate(self, candidate: Topology) -> Topology:
        """This topology with its shadow's candidate loaded (see `loader`)."""
        copy = self.model_copy()
        copy._candidate = candidate
        return copy

    @model_validator(mode="wrap")
    @classmethod
    def _templates_see_accepted_kinds(
        cls, data: Any, handler: ModelWrapValidatorHandler[Topology]
    ) -> Topology:
        """Prompts check `event.<field>` against the kinds this topology accepts."""
        accepts = data.get("accepts") if isinstance(data, dict) else None
        listed = accepts if isinstance(accepts, list) else []
        kinds = tuple(kind for kind in listed if isinstance(kind, str) and kind in _EVENTS)
        token = _ACCEPTED.set(kinds)
        try:
            return handler(data)
        finally:
            _ACCEPTED.reset(token)

    @model_validator(mode="after")
    def _consistent(self) -> Topology:
        names = [call.name for call in self.calls]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"call names must be unique; repeated: {', '.join(duplicates)}")
        if len(set(self.topics)) != len(self.topics):
            raise ValueError("input, output, dead-letter, parked and route topics must differ")
        routes = [route.name for route in self.routes]
        if len(set(routes)) != len(routes):
            raise ValueError("route names must be unique")
        has_vision = any(call.kind == "vision" for call in self.calls)
        if has_vision and self.accepts == ["text"]:
            raise ValueError("a vision call needs images, but the topology accepts only text")
        return self

    @model_validator(mode="after")
    def _steps_consistent(self) -> Topology:
        """`needs` name other calls, without a cycle, and templates use the results of
        needed calls only (the others may not have answered yet)."""
        names = {call.name for call in self.calls}
        for n, call in enumerate(self.calls):
            unknown = [need for need in call.needs if need not in names or need == call.name]
            if unknown:
                _step_error(n, "needs", f"needs {', '.join(map(repr, unknown))}: no other call")
            used = set().union(*(called(template) for template in call.templates))
            undeclared = sorted(used - set(call.needs))
            if undeclared:
                in_when = called(condition_template(call.when)) if call.when else set()
                listed = ", ".join(map(repr, undeclared))
                _step_error(
                    n,
                    "when" if in_when & set(undeclared) else "prompt",
                    f"uses the result of {listed}, which it does not list in needs",
                )
        for n, route in enumerate(self.routes):
            unknown = sorted(called(condition_template(route.when or "1")) - names)
            projected = {
                p.split(".")[1] for p in (route.fields or {}).values() if p.startswith("calls.")
            }
            if projected - names:
                missing = ", ".join(map(repr, sorted(projected - names)))
                raise PydanticCustomError(
                    "step",
                    "{problem}",
                    {"problem": f"projects {missing}: no call", WITHIN: ("routes", n, "fields")},
                )
            if unknown:
                raise PydanticCustomError(
                    "step",
                    "{problem}",
                    {
                        "problem": f"uses the result of {', '.join(map(repr, unknown))}: no call",
                        WITHIN: ("routes", n, "when"),
                    },
                )
        if self.retrieval is not None:
            templates = [self.retrieval.query, *self.retrieval.filters.values()]
            if any(called(template) for template in templates):
                raise PydanticCustomError(
                    "step",
                    "retrieval runs before the calls: its query and filters cannot use `calls`",
                    {WITHIN: ("retrieval",)},
                )
        try:
            TopologicalSorter({call.name: call.needs for call in self.calls}).prepare()
        except CycleError as exc:
            cycle = " -> ".join(exc.args[1])
            first = next(n for n, call in enumerate(self.calls) if call.name == exc.args[1][0])
            _step_error(first, "needs", f"the calls' needs make a cycle: {cycle}")
        return self

    @property
    def order(self) -> list[ModelCall]:
        """The calls in an order where each comes after those it needs."""
        by_name = {call.name: call for call in self.calls}
        graph = TopologicalSorter({call.name: call.needs for call in self.calls})
        return [by_name[name] for name in graph.static_order()]

    @property
    def parked(self) -> str:
        """The topic of parked events."""
        return self.parked_topic or f"{self.input_topic}.parked"

    @property
    def shadow_topic(self) -> str | None:
        """Where this topology's shadow writes (None: it has none, or no candidate loaded)."""
        if self.shadow is None or self._candidate is None:
            return None
        return self.shadow.topic or self._candidate.shadow_output_topic

    @property
    def shadow_output_topic(self) -> str:
        """Where this version's results go when it runs as a shadow (replayed, or beside
        the live version): `<output_topic>.shadow.<version>`, made a legal topic name."""
        return f"{self.output_topic}.shadow.{topic_safe(self.version)}"

    @property
    def topics(self) -> list[str]:
        """Every topic the topology reads or writes: input, output, dead letters, parked,
        routes."""
        routed = [route.topic for route in self.routes]
        return [self.input_topic, self.output_topic, self.dead_letter_topic, self.parked, *routed]


def topic_safe(text: str) -> str:
    """`text` as part of a topic or group name: characters Kafka refuses become `_`, and
    then a hash of the original is added, so `1.0+a` and `1.0_a` stay apart."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", text)
    return safe if safe == text else f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def _step_error(n: int, field: str, problem: str) -> None:
    raise PydanticCustomError(
        "step", "{problem}", {"problem": problem, WITHIN: ("calls", n, field)}
    )

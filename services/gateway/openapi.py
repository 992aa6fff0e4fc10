"""`GET /openapi.json`: the routes as an OpenAPI 3.1 document, with the request and
response schemas taken from the pydantic contracts (events, results)."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from llmflow.schemas.events import EVENT_ADAPTER
from llmflow.schemas.results import RESULT_ADAPTER

REF = "#/components/schemas/{model}"


def _schemas() -> dict[str, Any]:
    components: dict[str, Any] = {}

    def add(name: str, adapter: TypeAdapter[Any], mode: Any) -> None:
        schema = adapter.json_schema(ref_template=REF, mode=mode)
        components.update(schema.pop("$defs", {}))
        components[name] = schema

    add("Event", EVENT_ADAPTER, "validation")
    add("Result", RESULT_ADAPTER, "serialization")
    components["EventBatch"] = {
        "oneOf": [
            {"$ref": REF.format(model="Event")},
            {"type": "array", "items": {"$ref": REF.format(model="Event")}, "minItems": 1},
        ]
    }
    components["Accepted"] = {
        "type": "object",
        "required": ["events"],
        "properties": {
            "events": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "partition", "offset"],
                    "properties": {
                        "id": {"type": "string"},
                        "partition": {"type": "integer"},
                        "offset": {"type": "integer"},
                    },
                },
            }
        },
    }
    components["Error"] = {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "field", "message"],
                    "properties": {
                        "index": {"type": "integer"},
                        "field": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    }
    return components


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
    }


def _json(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {}}}}


def _console() -> dict[str, Any]:
    """The console's routes: its page (no token) and what the page reads."""
    html = {"text/html": {"schema": {"type": "string"}}}
    unauthorized = {"401": _error("No or unknown bearer token")}

    def read(summary: str, *parameters: dict[str, Any]) -> dict[str, Any]:
        ok = {"200": _json(summary)}
        return {
            "get": {"summary": summary, "parameters": list(parameters)}
            | {"responses": ok | unauthorized}
        }

    place = [
        {"name": name, "in": "path", "required": True, "schema": {"type": kind}}
        for name, kind in (("topic", "string"), ("partition", "integer"), ("offset", "integer"))
    ]
    return {
        "/console": {
            "get": {
                "summary": "The live console (asks for a token; holds no data)",
                "security": [],
                "responses": {"200": {"description": "the page", "content": html}},
            }
        },
        "/v1/console/snapshot": read(
            "Flow per topology, the newest dead letters and outputs, the token's grant"
        ),
        "/v1/console/stream": {
            "get": {
                "summary": "The snapshot as server-sent events, `event: snapshot`",
                "responses": {
                    "200": {
                        "description": "`event: snapshot`, `data: <the snapshot>`",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "429": _error("As many streams are open as allowed; see Retry-After"),
                }
                | unauthorized,
            }
        },
        "/v1/console/dead-letters": read("The newest dead letters of the token's tenant"),
        "/v1/console/outputs": read(
            "The newest outputs of the token's tenant, with their lineage",
            {"name": "q", "in": "query", "schema": {"type": "string"}},
        ),
        "/v1/console/cost": read("Cost per model and per tenant; spend against budgets"),
        "/v1/console/dead-letters/{topic}/{partition}/{offset}/replay": {
            "post": {
                "summary": "Republish the dead letter's event to its topology's input topic, "
                "and record it in the audit topic",
                "parameters": [
                    *place,
                    {
                        "name": "again",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "boolean"},
                        "description": "replay a dead letter this gateway replayed already",
                    },
                ],
                "responses": {
                    "202": _json("Republished: the audit record"),
                    "400": _error("Partition or offset is no number"),
                    "403": _error("The token has no replay grant"),
                    "404": _error("No dead letter of the token's tenant held there"),
                    "409": _error(
                        "The dead letter does not carry its event, was replayed already "
                        "(`?again=true` replays it once more), or is being replayed"
                    ),
                    "503": _error("The broker did not acknowledge in time"),
                }
                | unauthorized,
            }
        },
    }


def document(version: str) -> dict[str, Any]:
    topic = {"name": "topic", "in": "path", "required": True, "schema": {"type": "string"}}
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llmflow gateway",
            "version": version,
            "description": "Publish events to a topology's input topic; wait for one event's "
            "result, or stream a topology's results as server-sent events.",
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/topics/{topic}/events": {
                "post": {
                    "summary": "Publish one event or a batch; answered after the broker's acks",
                    "parameters": [topic],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": REF.format(model="EventBatch")}}
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "Every event written: id, partition and offset",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": REF.format(model="Accepted")}
                                }
                            },
                        },
                        "400": _error("The body or an event is invalid; nothing was published"),
                        "401": _error("No or unknown bearer token"),
                        "403": _error("An event names another tenant"),
                        "404": _error("Not the input topic of a topology"),
                        "408": _error("The body did not arrive within the body timeout"),
                        "413": _error("Body or batch larger than the gateway takes"),
                        "415": _error("The body is not application/json"),
                        "429": _error("Too many events wait for the broker; see Retry-After"),
                        "503": _error("The broker did not acknowledge in time"),
                    },
                }
            },
            "/v1/results/{event_id}": {
                "get": {
                    "summary": "The result of one event, waiting up to `wait` seconds",
                    "parameters": [
                        {
                            "name": "event_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "wait",
                            "in": "query",
                            "schema": {"type": "number", "minimum": 0, "default": 0},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The result as the worker published it",
                            "content": {
                                "application/json": {"schema": {"$ref": REF.format(model="Result")}}
                            },
                        },
                        "401": _error("No or unknown bearer token"),
                        "404": _error("No result of this tenant's came within `wait`"),
                    },
                }
            },
            "/v1/topics/{topic}/results": {
                "get": {
                    "summary": "A topology's results as server-sent events",
                    "parameters": [
                        topic,
                        {"name": "key", "in": "query", "schema": {"type": "string"}},
                        {"name": "tenant", "in": "query", "schema": {"type": "string"}},
                        {"name": "last_event_id", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "from",
                            "in": "query",
                            "schema": {"enum": ["now", "earliest"], "default": "now"},
                        },
                        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "`event: output|dead_letter|parked|error`, "
                            "`id: <position>`, `data: <a Result as JSON>`",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "400": _error(
                            "A malformed id, or one past its partitions' ends (a recreated topic)"
                        ),
                        "401": _error("No or unknown bearer token"),
                        "403": _error("`from=earliest` without the replay grant"),
                        "404": _error("Not a topology's input or output topic"),
                        "429": _error("As many streams are open as allowed; see Retry-After"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "security": [],
                    "responses": {"200": {"description": "ok", "content": text}},
                }
            },
            "/readyz": {
                "get": {
                    "security": [],
                    "responses": {
                        "200": {"description": "ready", "content": text},
                        "503": {"description": "the reasons, one a line", "content": text},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "security": [],
                    "responses": {"200": {"description": "Prometheus", "content": text}},
                }
            },
            "/openapi.json": {
                "get": {"security": [], "responses": {"200": {"description": "this document"}}}
            },
        }
        | _console(),
    }

"""The live console at `/console`: static files from the package, and the JSON and SSE
routes the page reads (behind the same bearer tokens as the rest): the flow per topology,
the latest dead letters (and their replay, for tokens with `replay`), the latest outputs
with their lineage, and cost per model and per tenant. Everything comes from Kafka: the
result index and the offsets the flow meter samples."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from llmflow.services.gateway.auth import Grant
from llmflow.services.gateway.http import (
    GRANT,
    drop,
    error,
    open_event_stream,
    too_many_streams,
)
from llmflow.services.gateway.results import Entry
from llmflow.services.gateway.slots import Full
from llmflow.services.gateway.spend import spend_rows

if TYPE_CHECKING:
    from llmflow.services.gateway.app import Gateway

STATIC = {
    "/console": ("index.html", "text/html"),
    "/console/console.js": ("console.js", "text/javascript"),
    "/console/console.css": ("console.css", "text/css"),
}
# The page loads its own script and style only, and talks to this origin only.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
LIST_LIMIT = 50
REPLAYS_KEPT = 10_000
_DIGITS = re.compile(r"[0-9]{1,19}")


def static_file(name: str) -> bytes:
    return resources.files("llmflow.services.gateway").joinpath("static", name).read_bytes()


def _visible(entries: Iterable[Entry], grant: Grant, record_type: str) -> Iterator[Entry]:
    return (e for e in entries if e.record_type == record_type and grant.sees(e.tenant))


def _load(entry: Entry) -> dict[str, Any]:
    data = orjson.loads(entry.value)
    return data if isinstance(data, dict) else {}


def _place(entry: Entry) -> dict[str, Any]:
    return {"topic": entry.topic, "partition": entry.partition, "offset": entry.offset}


def _row(entry: Entry, data: dict[str, Any]) -> dict[str, Any]:
    """What every row of a result shows first: where it is, whose, of which topology."""
    return {
        **_place(entry),
        "event_id": entry.event_id,
        "key": entry.key,
        "tenant": entry.tenant,
        "topology": entry.topology,
        "topology_version": data.get("topology_version"),
    }


def dead_letter_row(entry: Entry, grant: Grant) -> dict[str, Any]:
    data = _load(entry)
    return {
        **_row(entry, data),
        "stage": data.get("stage"),
        "error_kind": data.get("error_kind"),
        "message": data.get("message"),
        "failed_at": data.get("failed_at"),
        "source": {
            "topic": data.get("source_topic"),
            "partition": data.get("source_partition"),
            "offset": data.get("source_offset"),
        },
        "replayable": grant.replay and isinstance(data.get("original_b64"), str),
    }


def _call(call: dict[str, Any]) -> dict[str, Any]:
    fields = ("name", "kind", "model", "prompt_version", "tokens_in", "tokens_out")
    more = ("cost_usd", "latency_ms", "attempts", "reused")
    return {f: call.get(f) for f in fields + more}


def output_row(entry: Entry) -> dict[str, Any]:
    data = _load(entry)
    retrieval = data.get("retrieval") or None
    return {
        **_row(entry, data),
        "org_record": data.get("org_record"),
        "retrieval": None
        if retrieval is None
        else {
            "collection": retrieval.get("collection"),
            "mode": retrieval.get("mode"),
            "passages": [
                {f: p.get(f) for f in ("id", "key", "n", "version", "score")}
                for p in retrieval.get("passages") or []
            ],
        },
        "calls": [_call(c) for c in data.get("calls") or [] if isinstance(c, dict)],
        "routes": data.get("routes") or [],
        "totals": data.get("totals"),
        "worker": data.get("worker"),
        "produced_at": data.get("produced_at"),
    }


def dead_letters(entries: Iterable[Entry], grant: Grant, limit: int) -> list[dict[str, Any]]:
    found = []
    for entry in _visible(entries, grant, "dead_letter"):
        found.append(dead_letter_row(entry, grant))
        if len(found) >= limit:
            break
    return found


def outputs(entries: Iterable[Entry], grant: Grant, query: str, limit: int) -> list[dict[str, Any]]:
    """The newest outputs visible to `grant` whose event id or key contains `query`."""
    found = []
    for entry in _visible(entries, grant, "output"):
        if query and not (query in (entry.event_id or "") or query in (entry.key or "")):
            continue
        found.append(output_row(entry))
        if len(found) >= limit:
            break
    return found


def cost(entries: Iterable[Entry], grant: Grant, since: str = "") -> dict[str, Any]:
    """Cost per model (of its calls, the retrieval's query embedding among them) and per
    tenant (of its outputs' totals) over the held outputs visible to `grant`; `since` says
    how far back they reach."""
    models: dict[str, dict[str, Any]] = {}
    tenants: dict[str, dict[str, Any]] = {}
    count = 0
    for entry in _visible(entries, grant, "output"):
        data = _load(entry)
        count += 1
        retrieval = data.get("retrieval") or {}
        embedding = retrieval.get("embedding") if isinstance(retrieval, dict) else None
        for call in [*(data.get("calls") or []), embedding]:
            if not isinstance(call, dict):
                continue
            row = models.setdefault(
                str(call.get("model")),
                {"model": str(call.get("model")), "calls": 0, "tokens_in": 0, "tokens_out": 0}
                | {"cost_usd": 0.0},
            )
            row["calls"] += 1
            row["tokens_in"] += int(call.get("tokens_in") or 0)
            row["tokens_out"] += int(call.get("tokens_out") or 0)
            row["cost_usd"] += float(call.get("cost_usd") or 0.0)
        totals = data.get("totals") or {}
        tenant = entry.tenant or "(none)"
        row = tenants.setdefault(tenant, {"tenant": tenant, "outputs": 0, "cost_usd": 0.0})
        row["outputs"] += 1
        row["cost_usd"] += float(totals.get("cost_usd") or 0.0)
    for row in (*models.values(), *tenants.values()):
        row["cost_usd"] = round(row["cost_usd"], 6)
    return {
        "outputs": count,
        "since": since,
        "by_model": sorted(models.values(), key=lambda r: -r["cost_usd"]),
        "by_tenant": sorted(tenants.values(), key=lambda r: -r["cost_usd"]),
    }


class Console:
    """The console's routes over one gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.replayed: OrderedDict[tuple[str, int, int], dict[str, Any] | None] = OrderedDict()
        """The dead letters this gateway replayed (the newest `REPLAYS_KEPT`), each with its
        audit record (None while it is under way): a second click is asked to confirm."""

    def _grant(self, request: web.Request) -> Grant:
        return request[GRANT]

    async def page(self, request: web.Request) -> web.Response:
        name, content_type = STATIC[request.path]
        return web.Response(
            body=static_file(name),
            content_type=content_type,
            charset="utf-8",
            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
        )

    def snapshot(self, grant: Grant) -> dict[str, Any]:
        gateway = self.gateway
        index = gateway.index
        return {
            "at": datetime.now(UTC).isoformat(),
            "grant": {"tenant": grant.tenant, "replay": grant.replay},
            "window_s": gateway.flow.window_s,
            "flow": gateway.flow.snapshot(index.newest(), grant),
            "dead_letters": dead_letters(index.newest(), grant, 20),
            "outputs": outputs(index.newest(), grant, "", 20),
            "index": {"results": len(index), "bytes": index.bytes},
        }

    async def snapshot_route(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot(self._grant(request)), dumps=_dumps)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """`event: snapshot` every `console_every_s`, until the client leaves."""
        grant = self._grant(request)
        try:
            with self.gateway.slots.take(grant):
                return await self._stream(request, grant)
        except Full as exc:
            return too_many_streams(exc, self.gateway.settings.retry_after_s)

    async def _stream(self, request: web.Request, grant: Grant) -> web.StreamResponse:
        response = await open_event_stream(request)
        every = self.gateway.settings.console_every_s
        timeout = self.gateway.settings.write_timeout_s
        try:
            while True:
                body = orjson.dumps(self.snapshot(grant))
                await asyncio.wait_for(
                    response.write(b"event: snapshot\ndata: " + body + b"\n\n"), timeout
                )
                await asyncio.sleep(every)
        except ConnectionResetError:
            pass  # the client left
        except TimeoutError:
            drop(request)  # the client takes no bytes
        return response

    async def dead_letters_route(self, request: web.Request) -> web.Response:
        rows = dead_letters(self.gateway.index.newest(), self._grant(request), LIST_LIMIT)
        return web.json_response({"dead_letters": rows}, dumps=_dumps)

    async def outputs_route(self, request: web.Request) -> web.Response:
        query = request.query.get("q", "").strip()
        rows = outputs(self.gateway.index.newest(), self._grant(request), query, LIST_LIMIT)
        return web.json_response({"outputs": rows}, dumps=_dumps)

    async def cost_route(self, request: web.Request) -> web.Response:
        settings = self.gateway.settings
        since = (
            f"since the index's lookback ({settings.index_lookback} records per result "
            f"partition at start-up, then everything, the newest {settings.index_results} "
            "results at most)"
        )
        grant = self._grant(request)
        answer = cost(self.gateway.index, grant, since)
        answer["spend"] = spend_rows(self.gateway.spend, settings.budgets, grant, datetime.now(UTC))
        return web.json_response(answer, dumps=_dumps)

    async def replay(self, request: web.Request) -> web.Response:
        """Republish a dead letter's original event to its topology's input topic, as the
        bytes it was (a new offset: the worker answers it again), and record who did it."""
        grant = self._grant(request)
        if not grant.replay:
            return error(403, "forbidden", "replaying a dead letter needs a token with replay")
        topic = request.match_info["topic"]
        place = request.match_info["partition"], request.match_info["offset"]
        if not all(_DIGITS.fullmatch(n) for n in place):  # int() takes " +1", other digits
            return error(400, "invalid_place", "partition and offset are numbers (0-9)")
        partition, offset = int(place[0]), int(place[1])
        entry = self.gateway.index.at(topic, partition, offset)
        if entry is None or entry.record_type != "dead_letter" or not grant.sees(entry.tenant):
            return error(
                404, "no_dead_letter", f"no dead letter held at {topic}/{partition}/{offset}"
            )
        where = (topic, partition, offset)
        if where in self.replayed and request.query.get("again") != "true":
            done = self.replayed[where]
            if done is None:
                return error(409, "replay_under_way", "this dead letter is being replayed now")
            return error(
                409,
                "already_replayed",
                f"replayed at {done['at']} by {done['tenant'] or 'an open gateway'}; "
                "replay it again with ?again=true",
                replayed=done,
            )
        self.replayed[where] = None
        try:
            return await self._replay(entry, grant)
        finally:
            if self.replayed.get(where) is None:
                del self.replayed[where]  # not replayed after all
            while len(self.replayed) > REPLAYS_KEPT:
                self.replayed.popitem(last=False)

    async def _replay(self, entry: Entry, grant: Grant) -> web.Response:
        topology = next(t for t in self.gateway.topologies if t.name == entry.topology)
        letter = _load(entry)
        try:
            original = base64.b64decode(letter.get("original_b64") or "", validate=True)
        except (binascii.Error, ValueError):
            original = b""
        if not original:
            return error(
                409,
                "no_original",
                "this dead letter does not carry its event; it is still in "
                f"{letter.get('source_topic')} at offset {letter.get('source_offset')}",
            )
        send = self.gateway.publisher.send
        if send is None:
            return error(503, "broker_unavailable", "not connected to the Kafka broker yet")
        key = (entry.key or "").encode()
        timeout = self.gateway.settings.publish_timeout_s
        try:
            ack = await asyncio.wait_for(await send(topology.input_topic, original, key), timeout)
            record = {
                "record_type": "audit",
                "action": "replay_dead_letter",
                "tenant": grant.tenant,
                "at": datetime.now(UTC).isoformat(),
                "dead_letter": {**_place(entry), "event_id": entry.event_id}
                | {"stage": letter.get("stage"), "error_kind": letter.get("error_kind")},
                "republished": {
                    "topic": topology.input_topic,
                    "partition": ack.partition,
                    "offset": ack.offset,
                },
            }
            audit = self.gateway.settings.audit_topic
            await asyncio.wait_for(
                await send(audit, orjson.dumps(record), (grant.tenant or "").encode()), timeout
            )
        except TimeoutError:
            return error(503, "broker_unavailable", f"the broker did not ack within {timeout:g} s")
        except Exception as exc:  # aiokafka's KafkaError and its kin
            return error(503, "broker_unavailable", f"the broker refused the record: {exc}")
        self.replayed[(entry.topic, entry.partition, entry.offset)] = record
        return web.json_response({"replayed": record, "audit_topic": audit}, status=202)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def add_routes(app: web.Application, console: Console) -> None:
    for path in STATIC:
        app.router.add_get(path, console.page)
    app.router.add_get("/v1/console/snapshot", console.snapshot_route)
    app.router.add_get("/v1/console/stream", console.stream)
    app.router.add_get("/v1/console/dead-letters", console.dead_letters_route)
    app.router.add_get("/v1/console/outputs", console.outputs_route)
    app.router.add_get("/v1/console/cost", console.cost_route)
    app.router.add_post(
        "/v1/console/dead-letters/{topic}/{partition}/{offset}/replay", console.replay
    )

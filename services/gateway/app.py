"""The gateway's aiohttp routes, and the life of the process: the producer, the result
index's reader and the HTTP server on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmflow.services.broker.security import client_options
from llmflow.services.gateway import cursor
from llmflow.services.gateway.auth import Authenticator
from llmflow.services.gateway.console import STATIC, Console, add_routes
from llmflow.services.gateway.flow import FlowMeter, KafkaOffsets
from llmflow.services.gateway.follow import ResultFollower
from llmflow.services.gateway.http import GRANT, drop, open_event_stream, too_many_streams
from llmflow.services.gateway.http import error as _error
from llmflow.services.gateway.metrics import GatewayMetrics
from llmflow.services.gateway.openapi import document
from llmflow.services.gateway.publish import (
    BodyError,
    BrokerUnavailable,
    Busy,
    EventError,
    Publisher,
    RecordTooLarge,
    parse_body,
)
from llmflow.services.gateway.results import TP, ResultIndex, Subscription
from llmflow.services.gateway.settings import GatewaySettings
from llmflow.services.gateway.slots import Full, StreamSlots
from llmflow.services.gateway.spend import follow_spend
from llmflow.services.gateway.stalls import listening_socket, watch_stalls
from llmflow.services.gateway.stream import ResultStream, StreamOptions, replay_topics
from llmflow.services.worker.budgets import SpendView
from llmflow.services.worker.health import Readiness
from llmflow.topologies.spec import Topology

log = logging.getLogger(__name__)

PUBLIC = ("/healthz", "/readyz", "/metrics", "/openapi.json", *STATIC)
"""Routes without a token (the console's page and its files hold no data: the page asks
for a token and sends it with each request)."""
PRODUCER_RETRY_S = 2.0
PROBE_TIMEOUT_S = 2.0


class Gateway:
    """What the routes share: topologies, the index, the publisher, auth and metrics."""

    def __init__(
        self,
        settings: GatewaySettings,
        topologies: list[Topology],
        authenticator: Authenticator,
        index: ResultIndex | None = None,
        publisher: Publisher | None = None,
        metrics: GatewayMetrics | None = None,
        version: str = "unknown",
    ) -> None:
        self.settings = settings
        self.topologies = topologies
        self.inputs = {t.input_topic: t for t in topologies}
        self.by_topic = self.inputs | {t.output_topic: t for t in topologies}
        self.authenticator = authenticator
        self.index = index or ResultIndex(settings.index_results, settings.index_bytes)
        self.metrics = metrics or GatewayMetrics()
        self.publisher = publisher or Publisher(
            None,
            max_pending_events=settings.max_pending_events,
            max_pending_bytes=settings.max_pending_bytes,
            timeout_s=settings.publish_timeout_s,
            max_record_bytes=settings.max_record_bytes,
            observe=self.metrics.publish_seconds.observe,
        )
        self.follower = ResultFollower(
            settings.kafka_bootstrap_servers,
            self.result_topics(),
            self.index,
            settings.index_lookback,
        )
        self.flow = FlowMeter(topologies, settings.console_window_s)
        self._openapi: bytes | None = None
        self.slots = StreamSlots(settings.max_streams, settings.max_streams_per_tenant)
        self.end_offsets: Callable[[list[str]], Awaitable[dict[TP, int]]] | None = None
        """The result topics' end offsets from the broker (set by `serve`)."""
        self.spend = SpendView()
        self.readiness = Readiness([self._producer_ready, self.follower.not_ready])
        self.version = version
        self.metrics.watch(
            lambda: len(self.index),
            lambda: self.index.bytes,
            lambda: self.publisher.pending_events,
            lambda: self.slots.open,
        )

    def result_topics(self) -> dict[str, str]:
        """Every result topic (output, dead letter, parked) -> its topology's name."""
        return {
            topic: t.name
            for t in self.topologies
            for topic in (t.output_topic, t.dead_letter_topic, t.parked)
        }

    def _producer_ready(self) -> str | None:
        if self.publisher.send is None:
            return "not connected to the broker yet"
        if (failure := self.publisher.failure) is not None:
            return f"the last publish failed and the broker has not answered since: {failure}"
        return None

    async def _past_the_end(self, positions: dict[TP, int]) -> str | None:
        """Why `positions` lie past their partitions' ends, if they do: a stream from there
        would skip every result until the partition reached it (the topic was recreated, or
        the id is another cluster's). Asks the broker only for positions past what the index
        read; when the broker does not answer, the stream goes on."""
        ahead = {tp: o for tp, o in positions.items() if o > self.index.head.get(tp, 0)}
        if not ahead or self.end_offsets is None:
            return None
        try:
            ends = await asyncio.wait_for(
                self.end_offsets(sorted({t for t, _ in ahead})), PROBE_TIMEOUT_S
            )
        except Exception:  # the broker is away: the id may well be good
            return None
        for (topic, partition), offset in sorted(ahead.items()):
            end = ends.get((topic, partition), 0)
            if offset > end:
                return (
                    f"the id is at offset {offset} of {topic}[{partition}], whose end is "
                    f"{end}: the topic was recreated or the id is not from this cluster; "
                    "start again with from=now or from=earliest"
                )
        return None

    async def _probe_producer(self) -> None:
        """After a failed publish, ask the broker for metadata: an answer ends the failure,
        so a gateway a load balancer took out for it comes back without a publish."""
        probe = self.publisher.probe
        if self.publisher.failure is None or probe is None:
            return
        with contextlib.suppress(Exception):
            if await asyncio.wait_for(probe(), PROBE_TIMEOUT_S):
                self.publisher.failure = None

    # --- routes ---------------------------------------------------------------------------

    async def publish(self, request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        topology = self.inputs.get(topic)
        if topology is None:
            return _error(404, "unknown_topic", f"{topic} is the input topic of no topology")
        if request.content_type != "application/json":
            return _error(415, "unsupported_media_type", "send the events as application/json")
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return _error(413, "too_large", f"the body is larger than {limit} bytes")
        timeout = self.settings.body_timeout_s
        try:  # client_max_size stops a longer chunked body, the timeout a slower one
            body = await asyncio.wait_for(request.read(), timeout)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "too_large", f"the body is larger than {limit} bytes")
        except TimeoutError:
            return _error(408, "body_timeout", f"the body did not arrive within {timeout:g} s")
        try:
            parsed = parse_body(body, request[GRANT], self.settings.max_batch_events)
        except BodyError as exc:
            name = "too_large" if exc.status == 413 else "invalid_body"
            return _error(exc.status, name, str(exc))
        errors = [e for e in parsed if isinstance(e, EventError)] or [
            EventError(n, "kind", f"{topology.name} accepts {', '.join(topology.accepts)} events")
            for n, e in enumerate(parsed)
            if not isinstance(e, EventError) and e.kind not in topology.accepts
        ]
        if errors:
            forbidden = any(e.forbidden for e in errors)
            return _error(
                403 if forbidden else 400,
                "forbidden" if forbidden else "invalid_events",
                "nothing was published: "
                + (
                    "an event names another tenant"
                    if forbidden
                    else f"{len(errors)} problem(s) in the events"
                ),
                errors=[e.as_json() for e in errors],
            )
        events = [e for e in parsed if not isinstance(e, EventError)]
        try:
            acks = await self.publisher.publish(topic, events)
        except RecordTooLarge as exc:
            return _error(413, "too_large", str(exc), errors=[e.as_json() for e in exc.errors])
        except Busy as exc:
            retry = str(self.settings.retry_after_s)
            return _error(429, "busy", str(exc), headers={"Retry-After": retry})
        except BrokerUnavailable as exc:
            return _error(503, "broker_unavailable", str(exc))
        self.metrics.events_accepted.labels(topic).inc(len(acks))
        return web.json_response(
            {"events": [{"id": a.id, "partition": a.partition, "offset": a.offset} for a in acks]},
            status=202,
        )

    async def result(self, request: web.Request) -> web.Response:
        event_id = request.match_info["event_id"]
        try:
            wait = float(request.query.get("wait", "0"))
        except ValueError:
            wait = math.nan
        if not (wait >= 0 and math.isfinite(wait)):
            return _error(400, "invalid_wait", "wait is a number of seconds, 0 or more")
        wait = min(wait, self.settings.max_wait_s)
        entry = await self.index.wait(event_id, request[GRANT], wait)
        if entry is None:
            return _error(
                404,
                "no_result",
                f"no result of event {event_id!r} within {wait:g} s (the gateway holds the "
                f"newest {self.settings.index_results} results)",
            )
        return web.Response(body=entry.value, content_type="application/json")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        topic = request.match_info["topic"]
        topology = self.by_topic.get(topic)
        if topology is None:
            return _error(
                404, "unknown_topic", f"{topic} is the input or output topic of no topology"
            )
        grant = request[GRANT]
        topics = [topology.output_topic, topology.dead_letter_topic, topology.parked]
        tenant = request.query.get("tenant") or None
        if tenant is not None and grant.tenant is not None and tenant != grant.tenant:
            return _error(403, "forbidden", "this token reads its own tenant's results only")
        last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        start = request.query.get("from", "now")
        if last:
            try:
                positions = cursor.decode(last.strip(), topics)
            except cursor.CursorError as exc:
                return _error(400, "invalid_id", str(exc))
            if past := await self._past_the_end(positions):
                return _error(400, "id_past_the_end", past)
            if not grant.replay:  # resumes within the index's lookback, as `from=now` starts
                positions = self.index.not_before_lookback(positions, topics)
        elif start == "earliest":
            if not grant.replay:
                return _error(403, "forbidden", "from=earliest needs a token with replay")
            positions = {}
        elif start == "now":
            positions = {tp: o for tp, o in self.index.head.items() if tp[0] in topics}
        else:
            return _error(400, "invalid_from", "from is now or earliest")
        subscription = Subscription(
            topology.name,
            grant,
            request.query.get("key") or None,
            tenant,
            self.settings.stream_queue,
        )
        try:
            with self.slots.take(grant):
                return await self._stream(request, subscription, topics, positions)
        except Full as exc:
            return too_many_streams(exc, self.settings.retry_after_s)

    async def _stream(
        self,
        request: web.Request,
        subscription: Subscription,
        topics: list[str],
        positions: dict[TP, int],
    ) -> web.StreamResponse:
        response = await open_event_stream(request)
        options = StreamOptions(
            self.settings.heartbeat_s, self.settings.stream_queue, self.settings.write_timeout_s
        )
        stream = ResultStream(response, self.index, subscription, topics, positions, options)
        try:
            await response.write(b": connected\n\n")
            tps = [tp for tp in self.index.covered if tp[0] in topics]
            if not self.index.holds_after(positions, tps):
                await replay_topics(
                    stream,
                    self.settings.kafka_bootstrap_servers,
                    {t: subscription.topology for t in topics},
                )
            await stream.run()
        except ConnectionResetError:
            pass  # the client left
        except TimeoutError:
            drop(request)  # the client takes no bytes
        finally:
            stream.close()
        return response

    async def openapi(self, request: web.Request) -> web.Response:
        if self._openapi is None:  # built once: the route needs no token
            self._openapi = orjson.dumps(document(self.version))
        return web.Response(body=self._openapi, content_type="application/json")

    async def metrics_route(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        await self._probe_producer()
        reasons = self.readiness.reasons()
        if reasons:
            return web.Response(status=503, text="".join(f"{r}\n" for r in reasons))
        return web.Response(text="ready\n")


def make_app(gateway: Gateway) -> web.Application:
    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            gateway.metrics.requests.labels(route, str(status)).inc()

    @web.middleware
    async def authenticate(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in PUBLIC:
            return await handler(request)
        grant = gateway.authenticator.grant(request.headers.get("Authorization"))
        if grant is None:
            return _error(
                401,
                "unauthorized",
                "send a token: Authorization: Bearer <token>",
                headers={"WWW-Authenticate": 'Bearer realm="llmflow"'},
            )
        request[GRANT] = grant
        return await handler(request)

    @web.middleware
    async def as_json(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)

    app = web.Application(
        client_max_size=gateway.settings.max_body_bytes, middlewares=[count, as_json, authenticate]
    )
    app.router.add_post("/v1/topics/{topic}/events", gateway.publish)
    app.router.add_get("/v1/results/{event_id}", gateway.result)
    app.router.add_get("/v1/topics/{topic}/results", gateway.stream)
    app.router.add_get("/openapi.json", gateway.openapi)
    app.router.add_get("/metrics", gateway.metrics_route)
    app.router.add_get("/healthz", gateway.healthz)
    app.router.add_get("/readyz", gateway.readyz)
    add_routes(app, Console(gateway))
    return app


def runner_options(settings: GatewaySettings) -> dict[str, Any]:
    """The HTTP server's limits. aiohttp's keep-alive timer runs from a connection's start and
    from each answer, and closes it while no whole request head has come: it bounds idle
    connections and slow headers alike."""
    return {
        "access_log": None,
        "shutdown_timeout": 2,
        "keepalive_timeout": settings.idle_timeout_s,
    }


async def _connect(gateway: Gateway) -> Any:
    """Start the producer, trying again until the broker answers; returns it."""
    from aiokafka import AIOKafkaProducer

    settings = gateway.settings
    while True:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            **client_options(),
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            max_request_size=settings.max_record_bytes,
            request_timeout_ms=int(max(settings.publish_timeout_s, 5) * 1000),
            client_id="llmflow-gateway",
        )
        try:
            await producer.start()
        except Exception as exc:  # KafkaConnectionError and kin: try again
            log.warning(
                "gateway: producer cannot connect (%s); again in %g s", exc, PRODUCER_RETRY_S
            )
            with contextlib.suppress(Exception):
                await producer.stop()
            await asyncio.sleep(PRODUCER_RETRY_S)
            continue

        gateway.publisher.send = _sender(producer)
        gateway.publisher.probe = producer.client.force_metadata_update
        return producer


def _sender(producer: Any) -> Any:
    async def send(topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await producer.send(topic, value=value, key=key)
        return future

    return send


async def serve(gateway: Gateway, announce: Callable[[str], None] = print) -> None:
    """Run until SIGTERM or SIGINT: the producer, the index's reader and the HTTP server."""
    settings = gateway.settings
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    follower = asyncio.create_task(gateway.follower.run(), name="result-index")
    connecting = asyncio.create_task(_connect(gateway), name="producer")
    offsets = KafkaOffsets(settings.kafka_bootstrap_servers)
    gateway.end_offsets = offsets.ends
    flow = asyncio.create_task(
        gateway.flow.run(offsets, settings.worker_group, settings.console_every_s), name="flow"
    )
    spend = asyncio.create_task(
        follow_spend(
            settings.kafka_bootstrap_servers,
            settings.worker_group,
            gateway.topologies,
            gateway.spend,
            gateway.flow.partitions,
        ),
        name="spend",
    )
    runner = web.AppRunner(make_app(gateway), **runner_options(settings))
    await runner.setup()
    site = web.SockSite(runner, listening_socket(settings.host, settings.port))
    await site.start()
    assert runner.server is not None
    stalls = asyncio.create_task(
        watch_stalls(runner.server, settings.write_timeout_s), name="stalls"
    )
    port = runner.addresses[0][1] if runner.addresses else settings.port
    announce(f"llmflow gateway: listening on http://{settings.host}:{port}")
    try:
        await stop.wait()
    finally:
        gateway.publisher.send = None
        follower.cancel()
        flow.cancel()
        spend.cancel()
        stalls.cancel()
        await runner.cleanup()
        if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
            await connecting.result().stop()
        else:
            connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await follower
        for task in (flow, spend, stalls):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await offsets.close()

"""Keeps a worker's org-data store up to date with the tables' compacted topics.

Reads every partition of every table topic (no consumer group: each worker wants it all)
in a thread of its own, with its own event loop and consumer, and applies each fetched
batch in one transaction with its offsets. After a restart it goes on from the offsets it
applied; a topic that was recreated, or whose records before the applied offset are gone,
is read again from its start. Only committed records are read (`read_committed`), so a
load published in one transaction appears whole or not at all.

`wait_ready` returns once every partition has been applied up to the end offsets seen at
start-up: a worker takes no events before that.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import threading
import time
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from llmflow.services.broker.security import client_options
from llmflow.services.orgdata.changes import Change, Rejected, Unchecked, decode, unchecked
from llmflow.services.orgdata.store import (
    CHECKS_JSON,
    Batch,
    NotPlain,
    OrgDataError,
    OrgDataStore,
)

log = logging.getLogger(__name__)

POLL_MS = 200
"""Longest wait for new records: an update is applied well within a second."""
MAX_BATCH = 20_000
RETENTION = "delete.retention.ms"
PARTITIONS_CHECK_S = 30.0
"""How often the topics' partitions are looked up (partitions added to a table's topic are
read from their start within this time, without a restart) and the copy is marked as in
step with the topics (see `_seek`)."""
PROGRESS_EVERY_S = 5.0


class Materializer:
    def __init__(
        self,
        store: OrgDataStore,
        bootstrap_servers: str,
        topics: Mapping[str, str],
        *,
        client_id: str = "llmflow-orgdata",
    ) -> None:
        """`topics`: table -> its topic."""
        self.store = store
        self._servers = bootstrap_servers
        self._tables = {topic: table for table, topic in topics.items()}
        self._client_id = client_id
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.applied = 0
        self.rejected = 0
        """Records skipped: counted by the reading thread and, for a batch decoded again
        in full, by the writing one."""
        self._rejected_lock = threading.Lock()
        self.error: BaseException | None = None
        self._writing: asyncio.Future[None] | None = None
        self._assigned: set[TopicPartition] = set()
        self._ends_at = 0.0
        self._contact = 0.0  # when this process last applied a batch
        self._sync_target: tuple[float, dict[TopicPartition, int]] | None = None
        # Tables whose records are all decoded in Python: collections (their passages are
        # indexed), and tables that sent a value SQLite's json_valid() turned down.
        self._in_full = set(store.collections) if CHECKS_JSON else set(self._tables.values())

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def follows_tables(self) -> bool:
        """Whether there is anything to follow (a worker whose topologies name no table
        has nothing to catch up with)."""
        return bool(self._tables)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="orgdata", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        return self._ready.wait(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                asyncio.run(self._follow())
            except KafkaError as exc:  # the broker is away: the copy stays, as it was
                self.error = exc
                log.warning("org data: cannot read the table topics (%s); retrying in 1 s", exc)
                self._stopping.wait(1.0)
            except Exception as exc:  # the copy must stay live: start over after a pause
                self.error = exc
                log.exception("org data: reading the table topics failed; retrying in 1 s")
                self._stopping.wait(1.0)
            except asyncio.CancelledError as exc:
                # Nothing cancels this thread's loop: aiokafka's `stop()` lets its fetcher's
                # cancellation out after a broker outage. The thread must not die of it.
                self.error = exc
                log.warning("org data: the consumer stopped uncleanly; reading again in 1 s")
                self._stopping.wait(1.0)

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._servers,
            **client_options(),
            client_id=self._client_id,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        try:
            await consumer.start()
            partitions = await self._partitions(consumer)
            self._assigned = set(partitions)
            self._sync_target = None  # end offsets of the partitions this start replaces
            consumer.assign(partitions)
            self._ends_at = time.time()
            ends = await consumer.end_offsets(partitions)
            await self._seek(consumer, partitions, ends)
            await self._apply_until_stopped(consumer, partitions, ends)
        finally:
            await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        while True:
            found = await self._lookup_partitions(consumer)
            missing = sorted(topic for topic, parts in found.items() if not parts)
            if not missing:
                return [TopicPartition(t, p) for t, parts in found.items() for p in sorted(parts)]
            log.warning("org data: waiting for topics %s", ", ".join(missing))
            await asyncio.sleep(1.0)

    async def _lookup_partitions(self, consumer: AIOKafkaConsumer) -> dict[str, set[int]]:
        # `partitions_for_topic` knows only the topics the client already tracks.
        cluster = await consumer._client.fetch_all_metadata()
        return {topic: set(cluster.partitions_for_topic(topic) or ()) for topic in self._tables}

    async def _partitions_changed(self, consumer: AIOKafkaConsumer) -> bool:
        found = await self._lookup_partitions(consumer)
        now = {TopicPartition(t, p) for t, parts in found.items() for p in parts}
        added = now - self._assigned
        if added:
            log.info(
                "org data: new partitions %s; reading them from their start",
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(added)),
            )
        return bool(added)

    async def _seek(
        self,
        consumer: AIOKafkaConsumer,
        partitions: list[TopicPartition],
        ends: Mapping[TopicPartition, int],
    ) -> None:
        starts = await consumer.beginning_offsets(partitions)
        stale: dict[str, str] = {}  # table -> why it is read again
        for tp in partitions:
            table = self._tables[tp.topic]
            applied = self.store.positions(table).get(tp.partition)
            if applied is not None and not starts[tp] <= applied <= ends[tp]:
                stale[table] = "no longer matches its topic (recreated, or records gone)"
        # Compaction drops a tombstone delete.retention.ms after it cleans it: a copy away
        # from its topic longer than that may have missed deletes.
        retention = await self._delete_retention(sorted(self._tables))
        for topic, table in self._tables.items():
            limit = retention.get(topic)
            if limit is None or table in stale or not self.store.positions(table):
                continue
            # Within this process, the last batch applied counts too (a restart after an
            # error while catching up need not start over).
            synced = max(self.store.synced_at(table) or 0.0, self._contact) or None
            away = time.time() - synced if synced is not None else math.inf
            if away > limit:
                ago = "long" if synced is None else f"{away:.0f} s"
                stale[table] = (
                    f"was last in step with {topic} {ago} ago, longer than its "
                    f"delete.retention.ms ({limit:.0f} s): deletes may be gone from the topic"
                )
        for table, why in sorted(stale.items()):
            log.warning("org data: %s %s; reading it again", table, why)
            self.store.clear(table)
        for tp in partitions:
            applied = self.store.positions(self._tables[tp.topic]).get(tp.partition)
            consumer.seek(tp, applied if applied is not None else starts[tp])

    async def _delete_retention(self, topics: list[str]) -> dict[str, float]:
        """Each topic's delete.retention.ms, in seconds; a topic the broker would not
        describe (no right to, an old broker) is left out."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._servers, client_id=self._client_id, **client_options()
        )
        found: dict[str, float] = {}
        try:
            await admin.start()
            wanted = [
                ConfigResource(ConfigResourceType.TOPIC, topic, configs={RETENTION: None})
                for topic in topics
            ]
            for response in await admin.describe_configs(wanted):
                for error, _, _, topic, entries in response.resources:
                    for name, value, *_ in entries if error == 0 else ():
                        if name == RETENTION and value is not None:
                            found[topic] = int(value) / 1000
        except KafkaError as exc:
            log.warning("org data: cannot read the topics' %s (%s)", RETENTION, exc)
        finally:
            await admin.close()
        return found

    async def _mark_synced(self, consumer: AIOKafkaConsumer) -> None:
        """Every `PARTITIONS_CHECK_S`, the end offsets become a target; once the copy has
        applied up to them, it was in step with the topics at the time they were read."""
        if self._sync_target is None:
            at = time.time()
            try:
                ends = await consumer.end_offsets(sorted(self._assigned))
            except KafkaError:
                return  # the broker is away: nothing is known about the topics now
            self._sync_target = (at, ends)
        at, ends = self._sync_target
        for tp, end in ends.items():
            if await consumer.position(tp) < end:
                return
        self.store.mark_synced(self._tables.values(), at)
        self._sync_target = None

    async def _apply_until_stopped(
        self,
        consumer: AIOKafkaConsumer,
        partitions: list[TopicPartition],
        ends: Mapping[TopicPartition, int],
    ) -> None:
        # Catching up builds many short-lived objects per batch: the cyclic collector would
        # run over and over for nothing. Its thresholds come back once the copy is ready.
        thresholds = gc.get_threshold()
        if not self._ready.is_set():
            gc.set_threshold(100_000, 50, 100)
        # One batch is written (in a thread: SQLite lets go of the GIL) while the next is
        # fetched and decoded; batches are written one at a time, in the order fetched.
        try:
            await self._follow_batches(consumer, partitions, ends, thresholds)
        finally:
            gc.set_threshold(*thresholds)
            writing, self._writing = self._writing, None
            if writing is not None:  # the next start must not race the last write
                await asyncio.wait([writing])
                if not writing.cancelled() and writing.exception() is not None:
                    log.warning("org data: the last batch was not applied: %s", writing.exception())

    async def _written(self) -> None:
        """Wait for the batch being written, if any; its error is raised here."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            await writing

    def _write(
        self,
        tp: TopicPartition,
        batch: Batch,
        changes: list[tuple[int, Change]],
        next_offset: int,
        count: int,
    ) -> None:
        try:
            self.store.write(batch, next_offset)
        except NotPlain:
            table = batch.table
            log.info("org data: %s sent a record that is not a plain one; decoding all", table)
            self._in_full.add(table)
            decoded = [(offset, self._in_full_change(tp, offset, c)) for offset, c in changes]
            changes = [(offset, change) for offset, change in decoded if change is not None]
            self.store.apply(table, tp.partition, changes, next_offset)
        self.applied += count
        self._contact = time.time()

    def _in_full_change(self, tp: TopicPartition, offset: int, change: Change) -> Change | None:
        if isinstance(change, Unchecked):  # its key came as UTF-8: encoding gives it back
            return self._decoded(tp, offset, change.key.encode(), change.value)
        return change

    def _reject(self) -> None:
        with self._rejected_lock:
            self.rejected += 1

    def _decoded(
        self, tp: TopicPartition, offset: int, key: bytes | None, value: bytes | None
    ) -> Change | None:
        """The change a record makes; None for one that makes none or is skipped."""
        try:
            return decode(key, value)
        except Rejected as exc:
            self._reject()
            log.warning(
                "org data: %s[%d]@%d skipped: %s", tp.topic, tp.partition, offset, exc.reason
            )
        except Exception:  # a bug here must not stop the copy at this record, for ever
            self._reject()
            log.exception("org data: %s[%d]@%d skipped: cannot decode it", *tp, offset)
        return None

    async def _follow_batches(
        self,
        consumer: AIOKafkaConsumer,
        partitions: list[TopicPartition],
        ends: Mapping[TopicPartition, int],
        thresholds: tuple[int, int, int],
    ) -> None:
        started = last_report = last_check = time.monotonic()
        while not self._stopping.is_set():
            if self._ready.is_set() and time.monotonic() - last_check >= PARTITIONS_CHECK_S:
                last_check = time.monotonic()
                if await self._partitions_changed(consumer):
                    return  # `_run` starts over: every partition assigned, each from its offset
                await self._mark_synced(consumer)
            elif self._sync_target is not None:
                await self._mark_synced(consumer)
            fetched = await consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_BATCH)
            for tp, messages in fetched.items():
                quick = self._tables[tp.topic] not in self._in_full
                changes: list[tuple[int, Change]] = []
                for message in messages:
                    key, value, offset = message.key, message.value, message.offset
                    change = (quick and unchecked(key, value)) or self._decoded(
                        tp, offset, key, value
                    )
                    if change is not None:
                        changes.append((offset, change))
                batch = Batch.of(self._tables[tp.topic], tp.partition, changes)
                await self._written()
                # Handed to the thread now: a task would start only at the next await.
                self._writing = asyncio.get_running_loop().run_in_executor(
                    None, self._write, tp, batch, changes, messages[-1].offset + 1, len(messages)
                )
            if self._ready.is_set():
                await self._written()  # live: an error must surface now, not at the next batch
                continue
            behind = 0
            for tp in partitions:
                behind += max(0, ends[tp] - await consumer.position(tp))
            now = time.monotonic()
            if behind == 0:
                await self._written()
                self.store.mark_synced(self._tables.values(), self._ends_at)
                gc.set_threshold(*thresholds)
                log.info(
                    "org data: ready, %d records applied in %.1f s (%s)",
                    self.applied,
                    now - started,
                    ", ".join(f"{t} {n}" for t, n in self.store.tables().items()),
                )
                self._ready.set()
            elif now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                log.info("org data: catching up, %d records to go", behind)


def read_copy(
    store: OrgDataStore,
    bootstrap_servers: str,
    topics: Mapping[str, str],
    *,
    timeout_s: float = 300,
    client_id: str = "llmflow-orgdata",
) -> OrgDataStore:
    """`store`, filled with what a worker would hold of `topics` (table -> topic) now; it
    is closed if the topics cannot be read within `timeout_s`."""
    follower = Materializer(store, bootstrap_servers, topics, client_id=client_id)
    follower.start()
    try:
        ready = follower.wait_ready(timeout_s)
    finally:
        follower.stop()
    if not ready:
        store.close()
        names = ", ".join(sorted(topics.values()))
        raise OrgDataError(f"could not read {names} within {timeout_s:.0f} s")
    return store

"""Create topics up front, so partition counts are chosen, not left to auto-creation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from llmflow.services.broker.security import client_options

# bootstrap servers, topic names, partitions, replication factor, topic configs
#   -> partitions per topic
EnsureTopics = Callable[[str, Iterable[str], int, int, Mapping[str, str] | None], dict[str, int]]


def ensure_topics(
    bootstrap_servers: str,
    names: Iterable[str],
    partitions: int,
    replication_factor: int = 1,
    configs: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Create the topics that do not exist yet (with topic `configs`, e.g. compaction);
    returns every topic's partition count."""
    wanted = sorted(set(names))
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers, client_id="llmflow-admin", **client_options()
    )
    try:
        missing = sorted(set(wanted) - set(admin.list_topics()))
        for name in missing:
            # Another worker may have created it a moment ago.
            with suppress(TopicAlreadyExistsError):
                topic = NewTopic(name, partitions, replication_factor, topic_configs=configs)
                admin.create_topics([topic])
        described = admin.describe_topics(wanted)
        return {topic["name"]: len(topic["partitions"]) for topic in described}
    finally:
        admin.close()


def partition_counts(bootstrap_servers: str, names: Iterable[str]) -> dict[str, int]:
    """The partition count of each of `names` that exists (no topic is created)."""
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers, client_id="llmflow-admin", **client_options()
    )
    try:
        present = sorted(set(names) & set(admin.list_topics()))
        described = admin.describe_topics(present) if present else []
        return {topic["name"]: len(topic["partitions"]) for topic in described}
    finally:
        admin.close()

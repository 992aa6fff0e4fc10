"""The composition root builds a worker without a broker: topics, tables, agents, clients."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
import yaml

from llmflow.errors import ConfigError
from llmflow.services.orgdata import Materializer, OrgDataStore
from llmflow.services.worker.bootstrap import bootstrap
from llmflow.services.worker.settings import Settings
from llmflow.topologies.collections import load_collections


def no_org_data(
    settings: Settings, specs: object, ensure: object
) -> tuple[OrgDataStore, Materializer]:
    """An empty copy, followed by nothing (there is no broker)."""
    store = OrgDataStore(":memory:", load_collections())
    return store, Materializer(store, settings.kafka_bootstrap_servers, {})


class FakeEnsure:
    """Records the topics asked for; every topic has `partitions` partitions."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], Mapping[str, str] | None]] = []

    @property
    def topics(self) -> list[str]:
        return self.calls[0][0]

    def __call__(
        self,
        servers: str,
        names: Iterable[str],
        partitions: int,
        replication: int,
        configs: Mapping[str, str] | None,
    ) -> dict[str, int]:
        self.calls.append((list(names), configs))
        return {name: partitions for name in self.calls[-1][0]}


async def test_bootstrap_wires_every_topology(project_root: Path, tmp_path: Path) -> None:
    settings = Settings(
        kafka_bootstrap_servers="127.0.0.1:1",
        app_id="bootstrap-test",
        data_dir=tmp_path,
        topic_partitions=3,
        budgets={"acme": {"usd": 1}},
    )
    ensure = FakeEnsure()
    shipped = project_root / "topologies"
    app = bootstrap(
        settings,
        [shipped / "support_triage.yaml", shipped / "product_images.yaml"],
        ensure=ensure,
        org=no_org_data,
    )
    # Every topic a topology reads or writes is created up front, parked and routes included.
    assert ensure.topics == [
        "support.tickets",
        "support.triaged",
        "support.tickets.dlq",
        "support.tickets.parked",
        "support.escalations",
        "catalog.images",
        "catalog.images.enriched",
        "catalog.images.dlq",
        "catalog.images.parked",
        "catalog.images.review",
    ]
    # So are the tables' changelogs, compacted, before faust looks them up.
    changelogs = [names for names, configs in ensure.calls[1:]]
    assert changelogs == [
        [f"bootstrap-test-{topology}-{kind}-changelog" for kind in ("answered", "paid", "spend")]
        for topology in ("support_triage", "product_images")
    ]
    assert all(
        configs and configs["cleanup.policy"] == "compact" for _, configs in ensure.calls[1:]
    )
    assert app.conf.id == "bootstrap-test"
    assert set(app.agents) == {"llmflow.support_triage", "llmflow.product_images"}
    tables = {name: table.partitions for name, table in app.tables.items()}
    assert tables == {
        f"{topology}-{kind}": 3
        for topology in ("support_triage", "product_images")
        for kind in ("answered", "paid", "spend")
    }
    await app.on_before_shutdown.send()  # closes the model client, executor and org data


def _shadowed(folder: Path, project_root: Path, **shadow: object) -> Path:
    """support_triage with the shipped candidate as its shadow."""
    shipped = project_root / "topologies"
    (folder / "candidates").mkdir(exist_ok=True)
    candidate = (shipped / "candidates" / "support_triage.yaml").read_text()
    (folder / "candidates" / "support_triage.yaml").write_text(candidate)
    spec = yaml.safe_load((shipped / "support_triage.yaml").read_text())
    spec["shadow"] = {"topology": "candidates/support_triage.yaml", "share": 0.1, **shadow}
    path = folder / "support_triage.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


async def test_a_shadow_gets_its_topic_and_the_org_data_its_candidate_needs(
    project_root: Path, tmp_path: Path
) -> None:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", data_dir=tmp_path)
    ensure = FakeEnsure()
    seen: list[list[str]] = []

    def org(settings: Settings, specs: object, ensure: object) -> tuple[OrgDataStore, Materializer]:
        assert isinstance(specs, list)
        seen.append([f"{s.name} v{s.version}" for s in specs])
        return no_org_data(settings, specs, ensure)

    bootstrap(settings, [_shadowed(tmp_path, project_root)], ensure=ensure, org=org)
    assert ensure.topics[-1] == "support.triaged.shadow.2.1.0"
    assert seen == [["support_triage v2.0.1", "support_triage v2.1.0"]]


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("product.photos", "is a topic a topology reads or writes"),
        ("llmflow.orgdata.customers", "is an org-data table's topic"),
        ("__consumer_offsets", "is one of Kafka's own"),
    ],
)
def test_a_shadow_may_not_write_where_others_read(
    project_root: Path, tmp_path: Path, topic: str, problem: str
) -> None:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", data_dir=tmp_path)
    other = yaml.safe_load((project_root / "topologies" / "product_images.yaml").read_text())
    other["input_topic"] = "product.photos"
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    shadowed = _shadowed(tmp_path, project_root, topic=topic)
    with pytest.raises(ConfigError, match=problem):
        bootstrap(
            settings, [shadowed, tmp_path / "other.yaml"], ensure=FakeEnsure(), org=no_org_data
        )

"""The worker's settings hand each component a config of its own."""

from __future__ import annotations

import pytest

from llmflow.services.models.quotas import QuotaLimits
from llmflow.services.worker.settings import Settings
from llmflow.topologies.spec import Topology


def test_models_config_resolves_every_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_KEY", "s3cret")
    monkeypatch.setenv("LLMFLOW_QUOTAS", '{"gpt-4o-mini": {"rpm": 500}}')
    settings = Settings(
        openai_base_url="http://primary/v1",
        openai_api_key="k0",
        endpoints={
            "backup": {"base_url": "http://backup/v1", "api_key_env": "BACKUP_KEY"},
            "open": {"base_url": "http://open/v1"},
        },
        breaker_failures=2,
    )
    config = settings.models_config()
    keys = {name: c.api_key.get_secret_value() for name, c in config.connections.items()}
    assert keys == {"default": "k0", "backup": "s3cret", "open": ""}
    assert config.connections["backup"].base_url == "http://backup/v1"
    assert config.quotas == {"gpt-4o-mini": QuotaLimits(rpm=500)}
    assert (config.breaker_failures, config.retry, config.prices) == (
        2,
        settings.retry,
        settings.prices,
    )
    assert "s3cret" not in repr(config)


def test_image_limits_combine_topology_and_worker() -> None:
    topology = Topology.model_validate(
        {
            "name": "t",
            "version": "1",
            "input_topic": "in",
            "output_topic": "out",
            "dead_letter_topic": "dlq",
            "accepts": ["image"],
            "images": {"max_side": 512},
            "calls": [{"name": "c", "model": "m", "prompt": {"version": "1", "user": "u"}}],
        }
    )
    limits = Settings(image_allow_private_hosts=True).image_limits(topology)
    assert (limits.max_side, limits.allow_private_hosts, limits.file_root) == (512, True, None)

"""Outages pause a topology: the event waits for its endpoint, it is not dead-lettered."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge

from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.outputs import ModelCallResult
from llmflow.services.models.client import ModelCallError
from llmflow.services.models.probe import ProbeResult
from llmflow.services.worker import app as app_module
from llmflow.services.worker.metrics import Metrics
from llmflow.services.worker.outage import OutageGate
from llmflow.topologies import load_topology
from tests.unit.worker.test_error_boundary import (
    TOPOLOGIES,
    FakeMarks,
    FakeStream,
    FakeTopic,
    PipelineFactory,
    _raw,
)
from tests.unit.worker.test_error_boundary import executor as executor  # fixtures
from tests.unit.worker.test_error_boundary import make as make
from tests.unit.worker.test_pipeline import FakeModels


class FlakyEndpoint(FakeModels):
    """Refuses its first `down_for` requests, as an endpoint that is down would."""

    def __init__(self, down_for: int) -> None:
        super().__init__()
        self.down_for = down_for

    async def run(self, call: Any, **kwargs: Any) -> ModelCallResult:
        if self.down_for > 0:
            self.down_for -= 1
            error = ModelCallError(call.name, "connection_refused", "down", transient=True)
            error.endpoints = ("default",)
            raise error
        return await super().run(call, **kwargs)


class Probes:
    """Answers `failures` probes with a refusal, then says the endpoint is up."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.asked: list[str] = []

    async def __call__(self, endpoint: str) -> ProbeResult:
        self.asked.append(endpoint)
        if len(self.asked) <= self.failures:
            return ProbeResult(False, "connection refused")
        return ProbeResult(True, "ok")


class Gate(OutageGate):
    """Records when it pauses and resumes."""

    def __init__(self, probes: Probes) -> None:
        self.gauge = Gauge("paused", "test", ["topology"], registry=CollectorRegistry())
        self.resets: list[tuple[str, ...]] = []
        super().__init__(
            "support_triage",
            probe=probes,
            reset_circuits=self.resets.append,
            paused_gauge=self.gauge,
            interval_s=0.01,
        )
        self.pauses: list[bool] = []

    async def hold(self, reason: str, endpoints: tuple[str, ...]) -> None:
        if not self.paused:
            self.pauses.append(True)
        await super().hold(reason, endpoints)
        if self.pauses[-1]:
            self.pauses.append(False)

    def paused_now(self) -> float:
        return float(self.gauge.labels("support_triage")._value.get())


async def test_the_gate_pauses_probes_and_resumes() -> None:
    probes = Probes(failures=2)
    gate = Gate(probes)
    holders = [asyncio.create_task(gate.hold("refused", ("default",))) for _ in range(3)]
    await asyncio.sleep(0)
    assert gate.paused and gate.paused_now() == 1 and gate.pauses == [True]
    await asyncio.wait_for(asyncio.gather(*holders), 5)
    assert not gate.paused and gate.paused_now() == 0 and gate.pauses == [True, False]
    assert probes.asked == ["default"] * 3 and gate.resets == [("default",)]


@pytest.mark.parametrize(
    ("retrieves", "down_for"),
    [
        # The three calls run at once: three refusals, then one when the event is retried.
        (False, 4),
        # The query embedding runs first and alone: one refusal each time the event runs.
        (True, 2),
    ],
    ids=["calls", "query-embedding"],
)
async def test_an_event_waits_out_the_outage_and_is_answered(
    make: PipelineFactory, retrieves: bool, down_for: int
) -> None:
    probes = Probes(failures=3)
    gate = Gate(probes)
    outputs, dead = FakeTopic(), FakeTopic()
    topology = load_topology(TOPOLOGIES / "support_triage.yaml")
    if not retrieves:
        topology = topology.model_copy(update={"retrieval": None})
    body = app_module.agent_body(
        make(topology, models=FlakyEndpoint(down_for=down_for)),
        FakeMarks(),
        Metrics(),
        app_module._Sinks(outputs, dead, FakeTopic()),
        gate,
    )
    stream = FakeStream([_raw(), _raw(id="e-2")])
    assert [x async for x in body(stream.as_stream())] == [None, None]
    assert len(outputs.sent) == 2 and dead.sent == []
    assert gate.pauses == [True, False, True, False]  # the event is held twice
    assert len(probes.asked) == 3 + 1 + 1  # three refused, then up; up at once


@pytest.mark.parametrize("max_holds", [0, 2])
async def test_an_event_that_keeps_failing_is_dead_lettered_after_max_holds(
    make: PipelineFactory, max_holds: int
) -> None:
    dead = FakeTopic()
    body = app_module.agent_body(
        make(models=FlakyEndpoint(down_for=1_000)),
        FakeMarks(),
        Metrics(),
        app_module._Sinks(FakeTopic(), dead, FakeTopic()),
        Gate(Probes(failures=0)),
        max_holds=max_holds,
    )
    assert [x async for x in body(FakeStream([_raw()]).as_stream())] == [None]
    (letter,) = [DeadLetter.model_validate_json(value) for _, value in dead.sent]
    assert letter.stage == "model" and letter.error_kind.startswith("connection_refused")

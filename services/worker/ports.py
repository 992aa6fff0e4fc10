"""What the pipeline needs from outside, as protocols: model calls, org data, answers paid
for, budgets. The worker plugs in the real ones (`bootstrap`); tests plug in small fakes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from llmflow.schemas.outputs import ModelCallResult
from llmflow.services.orgdata.search import Hit, Mode
from llmflow.services.orgdata.store import OrgRecord
from llmflow.topologies.spec import ModelCall


class ModelRunner(Protocol):
    """Runs one declared call (`models.ModelClient`); raises `models.ModelCallError`."""

    async def run(
        self,
        call: ModelCall,
        *,
        call_id: str,
        system: str | None,
        user: str,
        image_urls: list[str],
    ) -> ModelCallResult: ...


class OrgData(Protocol):
    """Reference records by table and key (`orgdata.OrgDataStore`)."""

    def get(self, table: str, key: str) -> OrgRecord | None: ...


class Passages(Protocol):
    """Retrieval over document collections (`orgdata.Retriever`); blocking, so the
    pipeline runs it in a thread. Raises `orgdata.OrgDataError`."""

    def search(
        self,
        collection: str,
        query: str,
        vector: npt.NDArray[np.float32] | None,
        *,
        top_k: int,
        mode: Mode,
        tenant: str | None,
        filters: Mapping[str, str],
    ) -> list[Hit]: ...


class PaidCalls(Protocol):
    """Answers already paid for, by call id (durable across crashes and rebalances)."""

    def get(self, call_id: str) -> ModelCallResult | None: ...

    async def put(self, result: ModelCallResult) -> None:
        """Returns once the answer is durable."""


class AnsweredMarks(Protocol):
    """Records whose result is published, so that a redelivery of one is skipped."""

    def seen(self, partition: int, offset: int) -> bool: ...

    async def mark(self, partition: int, offset: int) -> None:
        """Returns once the mark is durable."""


@dataclass(frozen=True, slots=True)
class OverBudget:
    """A tenant's spend has reached its budget for the period."""

    period: str
    spent_usd: float
    budget_usd: float


class Budgets(Protocol):
    """Per-tenant spend against budgets, for the whole group."""

    def over_budget(self, tenant: str) -> OverBudget | None: ...

    def charge(self, tenant: str, cost_usd: float) -> None: ...

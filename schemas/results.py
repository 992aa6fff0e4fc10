"""Results: what a worker writes for an event, told apart by `record_type`."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, TypeAdapter

from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.outputs import Output
from llmflow.schemas.parked import Parked

AnyResult = Output | DeadLetter | Parked
Result = Annotated[AnyResult, Field(discriminator="record_type")]
RESULT_ADAPTER: TypeAdapter[AnyResult] = TypeAdapter(Result)

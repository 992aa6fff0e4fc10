"""llmflow: event-driven, multi-modal LLM pipelines on Kafka.

The one import root. Its subpackages are the repository's top-level folders:
`llmflow.schemas` (event contracts), `llmflow.topologies` (declared pipelines) and
`llmflow.services` (the processes). What this module exports is the public surface for
upstream and downstream code: build and publish events, read results, and the contracts
both follow.
"""

from importlib import metadata

from llmflow.errors import LlmflowError
from llmflow.schemas import (
    DeadLetter,
    ImageEvent,
    ImageRef,
    ModelCallResult,
    Output,
    Parked,
    Result,
    TextEvent,
    TextImageEvent,
    parse_event,
)
from llmflow.services.sdk import (
    EventProducer,
    ResultConsumer,
    image_event,
    parse_result,
    text_event,
    text_image_event,
)

__version__ = metadata.version("llmflow")

__all__ = [
    "DeadLetter",
    "EventProducer",
    "ImageEvent",
    "ImageRef",
    "LlmflowError",
    "ModelCallResult",
    "Output",
    "Parked",
    "Result",
    "ResultConsumer",
    "TextEvent",
    "TextImageEvent",
    "__version__",
    "image_event",
    "parse_event",
    "parse_result",
    "text_event",
    "text_image_event",
]

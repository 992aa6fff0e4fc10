"""Upstream and downstream SDK on kafka-python: publish events, read outputs."""

from llmflow.services.sdk.consumer import ResultConsumer, parse_result
from llmflow.services.sdk.events import image_event, image_ref, text_event, text_image_event
from llmflow.services.sdk.producer import EventProducer

__all__ = [
    "EventProducer",
    "ResultConsumer",
    "image_event",
    "image_ref",
    "parse_result",
    "text_event",
    "text_image_event",
]

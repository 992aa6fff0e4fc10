"""Real OpenAI token counts (o200k_base): the simulator's `usage`, the worker's quota estimates.

Prompt counts follow OpenAI's published chat formula: 3 tokens per message, the tokens of
each string field (plus 1 for a `name`), and 3 tokens priming the reply. A text part counts
its text; an image part counts a fixed 85 tokens, OpenAI's cost of a low-detail image, so
counting never decodes images. Other fields (tool calls, ...) are not counted.
"""

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import bpe_openai

ENCODING_NAME = "o200k_base"
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
IMAGE_PART_TOKENS = 85


@cache
def _encoding() -> Any:
    # Loading the BPE tables takes ~0.15 s: do it on first use, not at import.
    return bpe_openai.get_encoding(ENCODING_NAME)


def count_text_tokens(text: str) -> int:
    """Tokens of `text`; special-token markers in it are counted as plain text."""
    if not text:
        return 0
    return len(_encoding().encode(text, disallowed_special=()))


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return count_text_tokens(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if not isinstance(part, Mapping):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            total += count_text_tokens(part["text"])
        elif part.get("type") == "image_url":
            total += IMAGE_PART_TOKENS
    return total


def count_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt tokens of a chat request, per OpenAI's formula (see the module docstring)."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content":
                total += _content_tokens(value)
            elif isinstance(value, str):
                total += count_text_tokens(value)
                if key == "name":
                    total += TOKENS_PER_NAME
    return total

"""The bytes a model call sends to an OpenAI-compatible endpoint, and what is read back.

The SDK still sends every request (`AsyncOpenAI.post`: auth, base URL, default headers,
timeouts, its error types, the aiohttp transport) but its request transform and response
models are skipped: at 200 calls in flight they held a worker's one event loop CPU-bound
(docs/bench/results.md). The client builds plain JSON-ready dicts, so there is nothing to
transform, and only the few fields a call uses are read from the answer.

An answer that is not JSON or lacks what the call needs (`choices`, `data`) is an
`openai.APIResponseValidationError`: an API error like the others, which the retry policy
classifies as `bad_response`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import httpx2
import numpy as np
import openai
import orjson

CHAT_PATH = "/chat/completions"
EMBEDDINGS_PATH = "/embeddings"

# How much of a broken body a failure quotes: enough to recognise an HTML page or an error.
_QUOTED_CHARS = 200


@dataclass(frozen=True, slots=True)
class Answer:
    """One successful HTTP answer."""

    text: str
    embedding: list[float] | None
    model: str
    tokens_in: int
    tokens_out: int


def chat_content(model: str, request: dict[str, Any]) -> bytes:
    """The body of a chat completion request, `request` being the call's JSON-ready fields."""
    # orjson: several times faster than json.dumps on long prompts and image data URLs.
    return orjson.dumps({"model": model, **request})


def embeddings_content(model: str, request: dict[str, Any]) -> bytes:
    """The body of an embeddings request. Base64, as the SDK asks by default: a quarter of
    the bytes of a float list, and the same float32 values once decoded."""
    return orjson.dumps({"model": model, **request, "encoding_format": "base64"})


def chat_answer(response: httpx2.Response, requested: str) -> Answer:
    """Text, model and tokens of a chat completion; `requested` stands in for a missing model."""
    body = _json_object(response)
    try:
        message = body["choices"][0]["message"]
        text = message.get("content") or ""  # None when the model refused or called a tool
    except (KeyError, IndexError, TypeError, AttributeError):
        raise _bad(response, body, "no choices[0].message in the answer") from None
    if not isinstance(text, str):
        raise _bad(response, body, "choices[0].message.content is not a string")
    usage = body.get("usage")
    return Answer(
        text,
        None,
        _model(body, requested),
        _tokens(usage, "prompt_tokens"),
        _tokens(usage, "completion_tokens"),
    )


def embedding_answer(response: httpx2.Response, requested: str) -> Answer:
    """The first vector, model and prompt tokens of an embeddings answer."""
    body = _json_object(response)
    try:
        raw = body["data"][0]["embedding"]
    except (KeyError, IndexError, TypeError):
        raise _bad(response, body, "no data[0].embedding in the answer") from None
    if isinstance(raw, str):  # base64 of little-endian float32, as asked
        try:
            vector: list[float] = np.frombuffer(base64.b64decode(raw), dtype="<f4").tolist()
        except ValueError:  # bad base64, or a length that is no multiple of 4
            raise _bad(response, body, "data[0].embedding is not base64 float32") from None
    elif isinstance(raw, list):  # an endpoint that ignores encoding_format
        vector = raw
    else:
        raise _bad(response, body, "data[0].embedding is neither a list nor base64")
    return Answer(
        "", vector, _model(body, requested), _tokens(body.get("usage"), "prompt_tokens"), 0
    )


class ErrorAnswer(openai.APIResponseValidationError):
    """A success status whose body is an error (`{"error": ...}`), as some compatible
    servers answer a request they refuse: the request's fault, not the endpoint's, so it
    is neither retried nor counted against the endpoint's circuit."""


def _json_object(response: httpx2.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise _bad(response, None, "the answer is not JSON") from None
    if not isinstance(body, dict):
        raise _bad(response, body, "the answer is not a JSON object")
    if "error" in body and not ("choices" in body or "data" in body):
        quoted = response.content[:_QUOTED_CHARS].decode("utf-8", "replace")
        message = f"{response.request.url} answered with an error: {quoted!r}"
        raise ErrorAnswer(response, body, message=message)
    return body


def _model(body: dict[str, Any], requested: str) -> str:
    model = body.get("model")
    return model if isinstance(model, str) and model else requested


def _tokens(usage: object, field: str) -> int:
    """A token count; 0 when the endpoint reports none (some compatible servers omit usage)."""
    value = usage.get(field) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _bad(
    response: httpx2.Response, body: object, problem: str
) -> openai.APIResponseValidationError:
    quoted = response.content[:_QUOTED_CHARS].decode("utf-8", "replace")
    where = f"{response.request.url} (HTTP {response.status_code})"
    message = f"bad answer from {where}: {problem}: {quoted!r}"
    return openai.APIResponseValidationError(response, body, message=message)

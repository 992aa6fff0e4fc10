"""Deterministic SIMULATOR answers: pure functions of the request body, no I/O, no randomness.

Chat answers are `[sim {model}] re: {head} #{digest8}`: `head` is the first 12 words of the
last user message's text and `digest8` the first 8 hex digits of the sha256 of the
canonical JSON of model + messages. Images of that message are described after it.
With `break_schema`, a `json_schema` answer breaks its schema (see `schema.broken_answer`).

Embeddings are SIMULATED too, but meaningful: feature hashing (the "hashing trick") of the
text's words, word bigrams and character trigrams into a unit vector, in a space salted by
the model name. Texts that share words (or word stems) are close in cosine; no model runs.
"""

import base64
import hashlib
import itertools
import json
import math
import re
import struct
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from llmflow.errors import LlmflowError
from llmflow.services.models.tokens import count_prompt_tokens, count_text_tokens
from llmflow.services.modelsim.images import describe_image
from llmflow.services.modelsim.schema import broken_answer, schema_instance

JsonDict = dict[str, Any]

HEAD_WORDS = 12
DEFAULT_DIMENSIONS = 64
MAX_DIMENSIONS = 8192
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
SYSTEM_FINGERPRINT = "fp_llmflow_simulator"

# Simulated embeddings: feature weights (before 1 + log tf) and the words that carry no meaning.
UNIGRAM_WEIGHT = 1.0
BIGRAM_WEIGHT = 0.5
TRIGRAM_WEIGHT = 0.3
_STOP_WORDS_TEXT = """
    about after all also am an and any are as at be been but by can could did do does for
    from had has have he her him his how if in into is it its just me my no not of on or
    our out over she so than that the their them then there these they this those to too
    up us was we were what when where which who why will with would you your
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
_WORD = re.compile(r"\w+")


class BadRequest(LlmflowError):
    """The request is malformed; served as HTTP 400 with an OpenAI error body."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def canonical_json(value: Any) -> str:
    """The one JSON spelling digests are computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def sha256_hex(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def chat_completion(body: Mapping[str, Any], *, break_schema: bool = False) -> JsonDict:
    """A `chat.completion` object answering `body`; raises `BadRequest` when it is invalid.

    `break_schema` spoils a `json_schema` answer on purpose; other answers ignore it.
    """
    model = _model(body)
    messages = _messages(body)
    if body.get("stream"):
        raise BadRequest("stream=true is not supported by the simulator", "stream")
    digest = sha256_hex({"model": model, "messages": messages})
    # Built (and images decoded) even for structured outputs, so a bad image is always a 400.
    text = _plain_answer(model, messages, digest)
    content = _content(body.get("response_format"), text, digest, break_schema)
    prompt_tokens = count_prompt_tokens(messages)
    completion_tokens = count_text_tokens(content)
    return {
        "id": f"chatcmpl-sim-{sha256_hex(dict(body))[:24]}",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def embeddings(body: Mapping[str, Any]) -> JsonDict:
    """An embeddings `list` for `body`; raises `BadRequest` when it is invalid."""
    model = _model(body)
    texts = _embedding_inputs(body.get("input"))
    dimensions = body.get("dimensions", DEFAULT_DIMENSIONS)
    if (
        not isinstance(dimensions, int)
        or isinstance(dimensions, bool)
        or not 1 <= dimensions <= MAX_DIMENSIONS
    ):
        raise BadRequest(f"dimensions must be an integer in 1..{MAX_DIMENSIONS}", "dimensions")
    encoding_format = body.get("encoding_format", "float")
    if encoding_format not in ("float", "base64"):
        raise BadRequest("encoding_format must be 'float' or 'base64'", "encoding_format")
    data = []
    for index, text in enumerate(texts):
        vector = embedding_vector(model, text, dimensions)
        encoded: list[float] | str = vector
        if encoding_format == "base64":
            encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(count_text_tokens(text) for text in texts)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def embedding_vector(model: str, text: str, dimensions: int) -> list[float]:
    """A SIMULATED embedding: unit-length vector in [-1, 1]^dimensions, deterministic.

    Feature hashing (the "hashing trick"): the lowercased `\\w+` words (stop-words and
    1-character tokens dropped), word bigrams, and the character trigrams of each word padded
    with `#` ("#kn", "kni", ..., "fe#") each add a signed weight at an index, both given by a
    stable hash salted by `model`. Weights: 1 for a word, 0.5 for a bigram, 0.3 for each
    trigram of a word, times 1 + log(term frequency); the sum is L2-normalised. So texts that
    share words are close in cosine, "knife" and "knives" share trigrams, and every model has
    its own space. A text without features (empty, only stop-words) gets the pseudo-random
    unit vector of sha256(model, text).
    """
    words = [w for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in STOP_WORDS]
    if not words:
        return _random_unit_vector(model, text, dimensions)
    unigrams = Counter(words)
    bigrams = Counter(itertools.pairwise(words))
    salt = hashlib.sha256(model.encode()).digest()
    word_salt, bigram_salt, trigram_salt = np.frombuffer(salt, dtype="<u8", count=3)
    crcs = {word: zlib.crc32(word.encode()) for word in unigrams}
    word_scale = 1.0 + np.log(np.fromiter(unigrams.values(), dtype=np.float64))
    # Trigrams, vectorised: the words as "#w1##w2#..." code points; a window whose middle is
    # "#" straddles two words, so each word keeps exactly len(word) windows, in word order.
    points = np.frombuffer(
        "".join(f"#{word}#" for word in unigrams).encode("utf-32-le"), dtype="<u4"
    ).astype(np.uint64)
    windows = (points[:-2] << np.uint64(42)) | (points[1:-1] << np.uint64(21)) | points[2:]
    windows = windows[points[1:-1] != ord("#")]
    trigram_weight = np.repeat(TRIGRAM_WEIGHT * word_scale, [len(word) for word in unigrams])
    pairs = np.array([(crcs[a] << 32) | crcs[b] for a, b in bigrams], dtype=np.uint64)
    bigram_scale = 1.0 + np.log(np.fromiter(bigrams.values(), dtype=np.float64))
    hashes = np.concatenate(
        [
            _mix64(np.fromiter(crcs.values(), dtype=np.uint64) ^ word_salt),
            _mix64(pairs ^ bigram_salt),
            _mix64(windows ^ trigram_salt),
        ]
    )
    weights = np.concatenate(
        [UNIGRAM_WEIGHT * word_scale, BIGRAM_WEIGHT * bigram_scale, trigram_weight]
    )
    signs = np.where(hashes >> np.uint64(63), -1.0, 1.0)
    vector = np.bincount(
        (hashes % np.uint64(dimensions)).astype(np.intp),
        weights=signs * weights,
        minlength=dimensions,
    )
    norm = float(np.sqrt(vector @ vector))
    if norm == 0.0:  # the features cancelled out (a tiny `dimensions`)
        return _random_unit_vector(model, text, dimensions)
    result: list[float] = (vector / norm).tolist()
    return result


def _mix64(keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The splitmix64 finaliser: a bijection scattering near-identical keys (wraps mod 2^64)."""
    keys = (keys ^ (keys >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    keys = (keys ^ (keys >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return keys ^ (keys >> np.uint64(31))


def _random_unit_vector(model: str, text: str, dimensions: int) -> list[float]:
    """Unit-length vector in [-1, 1]^dimensions, a function of sha256(model, text) only."""
    seed = hashlib.sha256(canonical_json([model, text]).encode()).digest()
    raw = hashlib.shake_256(seed).digest(2 * dimensions)
    vector = [value / 32767.5 - 1.0 for value in struct.unpack(f"<{dimensions}H", raw)]
    norm = math.sqrt(sum(value * value for value in vector)) or 1.0
    return [value / norm for value in vector]


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter (a non-empty string)", "model")
    return model


def _messages(body: Mapping[str, Any]) -> list[Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array", "messages")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{param} must be an object", param)
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(f"{param}.role must be one of {sorted(ROLES)}", f"{param}.role")
        content = message.get("content")
        if content is None and role != "assistant":
            raise BadRequest(f"{param}.content is required", f"{param}.content")
        if isinstance(content, list):
            for part_index, part in enumerate(content):
                _check_part(part, f"{param}.content[{part_index}]")
        elif content is not None and not isinstance(content, str):
            raise BadRequest(f"{param}.content must be a string or an array", f"{param}.content")
    return messages


def _check_part(part: Any, param: str) -> None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise BadRequest(f"{param}.text must be a string", f"{param}.text")
    elif kind == "image_url":
        if _image_url(part) is None:
            raise BadRequest(f"{param}.image_url.url must be a string", f"{param}.image_url")
    else:
        raise BadRequest(f"{param} must be a text or image_url part", param)


def _image_url(part: Mapping[str, Any]) -> str | None:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    return url if isinstance(url, str) else None


def _plain_answer(model: str, messages: Sequence[Mapping[str, Any]], digest: str) -> str:
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    content = messages[last].get("content") if last is not None else None
    parts = content if isinstance(content, list) else []
    text = content if isinstance(content, str) else ""
    if parts:
        text = " ".join(part["text"] for part in parts if part.get("type") == "text")
    head = " ".join(text.split()[:HEAD_WORDS])
    answer = f"[sim {model}] re: {head} #{digest[:8]}"
    for index, part in enumerate(parts):
        url = _image_url(part) if part.get("type") == "image_url" else None
        if url is None:
            continue
        try:
            answer += " " + describe_image(url)
        except ValueError as exc:
            raise BadRequest(str(exc), f"messages[{last}].content[{index}]") from exc
    return answer


def _content(response_format: Any, text: str, digest: str, break_schema: bool) -> str:
    if response_format is None:
        return text
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return text
    if kind == "json_object":
        return json.dumps({"answer": text})
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest(
                "response_format.json_schema.schema must be an object", "response_format"
            )
        try:
            if break_schema:
                return broken_answer(schema, digest)
            return json.dumps(schema_instance(schema, digest))
        except ValueError as exc:
            raise BadRequest(f"unsupported schema: {exc}", "response_format") from exc
    raise BadRequest(
        "response_format.type must be 'text', 'json_object' or 'json_schema'", "response_format"
    )


def _embedding_inputs(value: Any) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise BadRequest("input must be a string or a non-empty array of strings", "input")
    for text in texts:
        if not isinstance(text, str):
            raise BadRequest("input must hold strings (token arrays are not supported)", "input")
        if not text:
            raise BadRequest("input must not contain empty strings", "input")
    return texts

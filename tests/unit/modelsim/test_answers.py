"""Chat and embedding answers: exact formats, determinism, images, validation; simulated
embeddings are feature-hashed, so texts that share words are close."""

import base64
import hashlib
import json
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmflow.services.models.tokens import count_prompt_tokens, count_text_tokens
from llmflow.services.modelsim.answers import (
    DEFAULT_DIMENSIONS,
    MAX_DIMENSIONS,
    BadRequest,
    chat_completion,
    embedding_vector,
    embeddings,
)


def _body(text: Any, model: str = "sim-chat") -> dict[str, Any]:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "an earlier question"},
            {"role": "assistant", "content": "an earlier answer"},
            {"role": "user", "content": text},
        ],
    }


def _digest8(body: dict[str, Any]) -> str:
    canonical = json.dumps(
        {"model": body["model"], "messages": body["messages"]},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def _content(body: dict[str, Any]) -> str:
    content = chat_completion(body)["choices"][0]["message"]["content"]
    assert isinstance(content, str)
    return content


def test_exact_text_format_uses_first_12_words_of_last_user_message() -> None:
    body = _body("  one two three four\nfive six seven eight nine ten eleven twelve thirteen ")
    expected = (
        "[sim sim-chat] re: one two three four five six seven eight nine ten eleven twelve "
        f"#{_digest8(body)}"
    )
    assert _content(body) == expected


def test_completion_object_shape_and_usage() -> None:
    body = _body("hello world")
    result = chat_completion(body)
    assert result["object"] == "chat.completion"
    assert result["id"].startswith("chatcmpl-sim-")
    assert result["model"] == "sim-chat"
    [choice] = result["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    usage = result["usage"]
    assert usage["prompt_tokens"] == count_prompt_tokens(body["messages"])
    assert usage["completion_tokens"] == count_text_tokens(choice["message"]["content"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_deterministic_and_sensitive_to_text() -> None:
    first = chat_completion(_body("hello world"))
    assert chat_completion(_body("hello world")) == first
    other = chat_completion(_body("hello worlds"))
    assert other["id"] != first["id"]
    assert (
        other["choices"][0]["message"]["content"][-8:]
        != (first["choices"][0]["message"]["content"][-8:])
    )


def test_text_parts_are_joined_with_a_space() -> None:
    parts = [{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}]
    body = _body(parts)
    assert _content(body) == f"[sim sim-chat] re: hello world #{_digest8(body)}"


def test_images_are_described_in_order(red_png_url: str) -> None:
    parts = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": red_png_url}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    body = _body(parts, model="sim-vision")
    assert _content(body) == (
        f"[sim sim-vision] re: what is this #{_digest8(body)}"
        " [image 40x30 RGB mean #ff0000] [image url https://example.com/cat.jpg]"
    )


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,not-base64!!",
        "data:image/png;base64," + base64.b64encode(b"not an image").decode(),
        "data:image/png,raw",
        "ftp://example.com/a.png",
    ],
)
def test_bad_image_url_is_a_bad_request(url: str) -> None:
    body = _body([{"type": "image_url", "image_url": {"url": url}}])
    with pytest.raises(BadRequest) as caught:
        chat_completion(body)
    assert caught.value.param == "messages[3].content[0]"


def test_json_object_wraps_the_plain_answer() -> None:
    body = _body("hello world")
    plain = _content(body)
    body["response_format"] = {"type": "json_object"}
    assert json.loads(_content(body)) == {"answer": plain}


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": "hi"}]},
        {"model": "m"},
        {"model": "m", "messages": []},
        {"model": "m", "messages": "hi"},
        {"model": 3, "messages": [{"role": "user", "content": "hi"}]},
        {"model": "m", "messages": [{"role": "wizard", "content": "hi"}]},
        {"model": "m", "messages": [{"role": "user", "content": 5}]},
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "yaml"},
        },
    ],
)
def test_invalid_chat_bodies(body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        chat_completion(body)


def test_embeddings_are_normalised_and_deterministic() -> None:
    result = embeddings({"model": "sim-embed", "input": ["hello world", "other text"]})
    assert result["object"] == "list"
    assert result["model"] == "sim-embed"
    assert [item["index"] for item in result["data"]] == [0, 1]
    first, second = (item["embedding"] for item in result["data"])
    assert len(first) == DEFAULT_DIMENSIONS == 64
    assert all(-1 <= value <= 1 for value in first + second)
    assert math.isclose(math.fsum(v * v for v in first), 1.0, rel_tol=1e-9)
    assert first != second
    again = embeddings({"model": "sim-embed", "input": "hello world"})
    assert again["data"][0]["embedding"] == first
    other_model = embeddings({"model": "other", "input": "hello world"})
    assert other_model["data"][0]["embedding"] != first
    tokens = count_text_tokens("hello world") + count_text_tokens("other text")
    assert result["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_embeddings_dimensions_and_base64() -> None:
    floats = embeddings({"model": "m", "input": "hi", "dimensions": 8})["data"][0]["embedding"]
    assert len(floats) == 8
    body = {"model": "m", "input": "hi", "dimensions": 8, "encoding_format": "base64"}
    encoded = embeddings(body)["data"][0]["embedding"]
    decoded = struct.unpack("<8f", base64.b64decode(encoded))
    assert decoded == pytest.approx(floats, abs=1e-6)


def _cosine(first: list[float], second: list[float]) -> float:
    return math.fsum(a * b for a, b in zip(first, second, strict=True))


def _is_unit(vector: list[float]) -> bool:
    return math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-9) and all(
        -1 <= v <= 1 for v in vector
    )


KNIFE = "My chef's knife handle cracked"
WARRANTY = "Kitchen knife warranty: we replace a cracked or broken knife handle free of charge"
SHIPPING = "Shipping times to the US are usually 5 to 7 business days"


def test_embedding_vectors_are_deterministic() -> None:
    for text in (KNIFE, WARRANTY, "", "the of and"):
        assert embedding_vector("sim-embed", text, 256) == embedding_vector("sim-embed", text, 256)
    assert MAX_DIMENSIONS == 8192


@pytest.mark.parametrize("dimensions", [1, 2, 7, DEFAULT_DIMENSIONS, 256, 1536, MAX_DIMENSIONS])
def test_embedding_vectors_are_unit_length(dimensions: int) -> None:
    for text in (KNIFE, WARRANTY, SHIPPING, "knife", "knives knives knives"):
        vector = embedding_vector("sim-embed", text, dimensions)
        assert len(vector) == dimensions
        assert _is_unit(vector)


@pytest.mark.parametrize("dimensions", [DEFAULT_DIMENSIONS, 256, 1536])
def test_texts_that_share_words_are_closer(dimensions: int) -> None:
    query, warranty, shipping = (
        embedding_vector("sim-embed", text, dimensions) for text in (KNIFE, WARRANTY, SHIPPING)
    )
    assert _cosine(query, warranty) > _cosine(query, shipping) + 0.3
    knife, knives = (embedding_vector("sim-embed", w, dimensions) for w in ("knife", "knives"))
    assert _cosine(knife, knives) > 0  # they share the trigrams "#kn" and "kni"


def test_each_model_has_its_own_space() -> None:
    for text in (KNIFE, "", "the of and"):
        assert embedding_vector("sim-embed", text, 256) != embedding_vector("other", text, 256)


@pytest.mark.parametrize("text", ["", "the of and", "a I  ,;", "é"])
def test_texts_without_features_still_get_a_unit_vector(text: str) -> None:
    vector = embedding_vector("sim-embed", text, DEFAULT_DIMENSIONS)
    assert _is_unit(vector)
    assert vector == embedding_vector("sim-embed", text, DEFAULT_DIMENSIONS)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200), dimensions=st.integers(1, 300))
def test_any_text_gets_a_unit_vector(text: str, dimensions: int) -> None:
    vector = embedding_vector("sim-embed", text, dimensions)
    assert len(vector) == dimensions
    assert _is_unit(vector)


@pytest.mark.parametrize(
    "body",
    [
        {"input": "hi"},
        {"model": "m"},
        {"model": "m", "input": []},
        {"model": "m", "input": [[1, 2, 3]]},
        {"model": "m", "input": ""},
        {"model": "m", "input": "hi", "dimensions": 0},
        {"model": "m", "input": "hi", "encoding_format": "int8"},
    ],
)
def test_invalid_embedding_bodies(body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        embeddings(body)

"""Reading answers without the SDK's models: what a call needs, or a classified failure."""

from __future__ import annotations

import base64
import json
import random
import struct
from typing import Any

import httpx2
import openai
import pytest

from llmflow.services.models.retry import RetryPolicy, classify, decide, is_transient
from llmflow.services.models.wire import (
    ErrorAnswer,
    chat_answer,
    chat_content,
    embedding_answer,
    embeddings_content,
)

REQUEST = httpx2.Request("POST", "http://model/v1/chat/completions")


def _response(body: Any) -> httpx2.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx2.Response(200, content=content, request=REQUEST)


def _chat(**fields: Any) -> dict[str, Any]:
    message = {"role": "assistant", "content": "hi"}
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    return {"model": "m1-2026", "choices": [{"index": 0, "message": message}], "usage": usage} | (
        fields
    )


def test_chat_answer_reads_text_model_and_tokens() -> None:
    answer = chat_answer(_response(_chat()), "m1")
    assert (answer.text, answer.model, answer.tokens_in, answer.tokens_out) == (
        "hi",
        "m1-2026",
        7,
        3,
    )
    assert answer.embedding is None


@pytest.mark.parametrize(
    "usage", [None, {}, {"prompt_tokens": None, "completion_tokens": "3"}, "none"]
)
def test_missing_usage_counts_no_tokens(usage: object) -> None:
    answer = chat_answer(_response(_chat(usage=usage)), "m1")
    assert (answer.tokens_in, answer.tokens_out) == (0, 0)


def test_a_missing_model_is_the_requested_one_and_no_content_is_empty_text() -> None:
    body = _chat(choices=[{"message": {"role": "assistant", "content": None}}])
    del body["model"]
    answer = chat_answer(_response(body), "m1")
    assert (answer.text, answer.model) == ("", "m1")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<html>502 Bad Gateway</html>", "not JSON"),
        (b'{"choices": [{"message": {"content": "cut sho', "not JSON"),
        (b"", "not JSON"),
        ([1, 2], "not a JSON object"),
        ({"choices": []}, "no choices"),
        ({"choices": [{"text": "legacy completion"}]}, "no choices"),
        ({"choices": [{"message": {"content": ["parts"]}}]}, "not a string"),
    ],
)
def test_a_broken_answer_is_a_classified_api_error(body: Any, problem: str) -> None:
    with pytest.raises(openai.APIResponseValidationError) as info:
        chat_answer(_response(body), "m1")
    error = info.value
    assert problem in str(error) and "http://model/v1/chat/completions" in str(error)
    assert isinstance(error, openai.APIError) and error.status_code == 200
    assert classify(error) == "bad_response"
    # The endpoint's trouble (a body cut short, a proxy's page): retried like a 5xx.
    decision = decide(error, 1, 60, RetryPolicy(), call="c", rng=random.Random(0))
    assert decision.delay_s is not None and decision.reason == "bad_response"


@pytest.mark.parametrize("read", [chat_answer, embedding_answer])
def test_an_error_in_a_success_status_is_the_requests_fault(read: Any) -> None:
    """Some compatible servers refuse a request (a context too long) with 200 and an error
    body: retrying it is paying again for the same refusal, and counting it against the
    endpoint would open its circuit for every other event."""
    with pytest.raises(ErrorAnswer) as info:
        read(_response({"error": {"message": "context too long"}}), "m1")
    error = info.value
    assert "answered with an error" in str(error) and "context too long" in str(error)
    assert classify(error) == "error_answer" and not is_transient(error)
    decision = decide(error, 1, 60, RetryPolicy(), call="c", rng=random.Random(0))
    assert decision.delay_s is None


def test_the_quote_of_a_broken_answer_is_short() -> None:
    with pytest.raises(openai.APIResponseValidationError) as info:
        chat_answer(_response(b"x" * 10_000), "m1")
    assert len(str(info.value)) < 400


def _embeddings(vector: Any, **fields: Any) -> dict[str, Any]:
    data = [{"object": "embedding", "index": 0, "embedding": vector}]
    usage = {"prompt_tokens": 5, "total_tokens": 5}
    return {"object": "list", "data": data, "model": "e1", "usage": usage} | fields


def test_embeddings_in_base64_and_as_floats() -> None:
    vector = [0.5, -0.25, 0.125]
    encoded = base64.b64encode(struct.pack("<3f", *vector)).decode()
    for given in (encoded, vector):
        answer = embedding_answer(_response(_embeddings(given)), "e1")
        assert (answer.embedding, answer.model, answer.tokens_in, answer.tokens_out) == (
            vector,
            "e1",
            5,
            0,
        )
    assert embedding_answer(_response(_embeddings(vector, usage=None)), "e1").tokens_in == 0


@pytest.mark.parametrize(
    "body",
    [
        {"data": []},
        {"object": "list"},
        _embeddings("not base64!"),
        _embeddings("AAA="),
        _embeddings(3),
    ],
)
def test_broken_embeddings_are_bad_responses(body: dict[str, Any]) -> None:
    with pytest.raises(openai.APIResponseValidationError) as info:
        embedding_answer(_response(body), "e1")
    assert classify(info.value) == "bad_response"


def test_request_bodies() -> None:
    request = {"messages": [{"role": "user", "content": "héllo"}], "max_tokens": 5}
    assert json.loads(chat_content("m1", request)) == {"model": "m1", **request}
    assert json.loads(embeddings_content("e1", {"input": "x", "dimensions": 8})) == {
        "model": "e1",
        "input": "x",
        "dimensions": 8,
        "encoding_format": "base64",
    }

"""The real OpenAI SDK talks to the simulator and parses its answers."""

import json
from collections.abc import AsyncIterator

import openai
import pytest
from aiohttp.test_utils import TestServer

from llmflow.services.modelsim.config import SimulatorConfig
from llmflow.services.modelsim.server import make_app


@pytest.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    async with TestServer(make_app(SimulatorConfig())) as server:
        sdk = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="x", max_retries=0)
        try:
            yield sdk
        finally:
            await sdk.close()


async def test_chat_with_text_and_image(client: openai.AsyncOpenAI, red_png_url: str) -> None:
    completion = await client.chat.completions.create(
        model="sim-vision",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe this picture"},
                    {"type": "image_url", "image_url": {"url": red_png_url}},
                ],
            }
        ],
    )
    assert completion.model == "sim-vision"
    assert completion.choices[0].finish_reason == "stop"
    content = completion.choices[0].message.content
    assert content is not None
    assert content.startswith("[sim sim-vision] re: describe this picture #")
    assert content.endswith(" [image 40x30 RGB mean #ff0000]")
    assert completion.usage is not None
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


async def test_chat_json_schema(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="sim-chat",
        messages=[{"role": "user", "content": "rate this"}],
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "rating",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {
                        "label": {"type": "string", "enum": ["good", "bad"]},
                        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
                    },
                    "required": ["label", "stars"],
                    "additionalProperties": False,
                },
            },
        },
    )
    content = completion.choices[0].message.content
    assert content is not None
    value = json.loads(content)
    assert value["label"] in ("good", "bad")
    assert 1 <= value["stars"] <= 5


async def test_embeddings(client: openai.AsyncOpenAI) -> None:
    result = await client.embeddings.create(model="sim-embed", input=["a", "b"], dimensions=16)
    assert [item.index for item in result.data] == [0, 1]
    assert all(len(item.embedding) == 16 for item in result.data)
    norm = sum(value * value for value in result.data[0].embedding)
    assert norm == pytest.approx(1.0, abs=1e-5)
    assert result.usage.prompt_tokens == 2


async def test_models_list(client: openai.AsyncOpenAI) -> None:
    models = [model async for model in client.models.list()]
    assert "sim-chat" in [model.id for model in models]
    assert {model.owned_by for model in models} == {"llmflow-simulator"}


async def test_errors_map_to_sdk_exceptions(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="sim-chat", messages=[])

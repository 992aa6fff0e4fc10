"""Model calls through the openai SDK, against any OpenAI-compatible endpoint."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Literal

import openai
from openai import AsyncOpenAI, DefaultAioHttpClient

from schemas.outputs import ModelCallResult
from services.errors import LlmflowError
from services.settings import Settings
from topologies.spec import ModelCall, Topology

# Statuses the SDK already retried (with backoff and Retry-After) before giving up.
_TRANSIENT_STATUSES = {408, 409, 429}


class ModelCallError(LlmflowError):
    """A model call failed for good; `kind` is stable, `transient` says retries ran out."""

    def __init__(self, call: str, kind: str, message: str, *, transient: bool) -> None:
        self.call = call
        self.kind = kind
        self.transient = transient
        super().__init__(f"call {call!r}: {message}")


def call_id(event_id: str, topology: Topology, call: ModelCall) -> str:
    """Same event, topology version, call and prompt version -> same id (the pay-once key)."""
    parts = (event_id, topology.name, topology.version, call.name, call.prompt.version)
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def make_openai_client(
    settings: Settings, transport: Literal["aiohttp", "httpx"] = "aiohttp"
) -> AsyncOpenAI:
    """One client per worker process; the aiohttp transport holds up better at high concurrency."""
    return AsyncOpenAI(
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key.get_secret_value(),
        timeout=settings.model_timeout_s,
        max_retries=settings.model_max_retries,
        http_client=DefaultAioHttpClient() if transport == "aiohttp" else None,
    )


class ModelClient:
    """Runs one declared call with its rendered prompt and reports answer, tokens and time."""

    def __init__(self, client: AsyncOpenAI) -> None:
        self._client = client

    async def close(self) -> None:
        await self._client.close()

    async def run(
        self,
        call: ModelCall,
        *,
        call_id: str,
        system: str | None,
        user: str,
        image_urls: list[str],
    ) -> ModelCallResult:
        started = time.perf_counter()
        headers = {"x-llmflow-call-id": call_id}
        try:
            if call.kind == "embedding":
                answer, model, usage = await self._embed(call, user, headers)
            else:
                answer, model, usage = await self._chat(call, system, user, image_urls, headers)
        except openai.APIStatusError as exc:
            transient = exc.status_code in _TRANSIENT_STATUSES or exc.status_code >= 500
            kind = f"http_{exc.status_code}"
            raise ModelCallError(call.name, kind, exc.message, transient=transient) from exc
        except openai.APITimeoutError as exc:
            raise ModelCallError(call.name, "timeout", str(exc), transient=True) from exc
        except openai.APIConnectionError as exc:
            raise ModelCallError(call.name, "connection", str(exc), transient=True) from exc
        return ModelCallResult(
            name=call.name,
            kind=call.kind,
            call_id=call_id,
            model=model,
            prompt_version=call.prompt.version,
            answer=answer,
            tokens_in=usage[0],
            tokens_out=usage[1],
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
        )

    async def _chat(
        self,
        call: ModelCall,
        system: str | None,
        user: str,
        image_urls: list[str],
        headers: dict[str, str],
    ) -> tuple[Any, str, tuple[int, int]]:
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        if call.kind == "vision":
            parts: list[dict[str, Any]] = [{"type": "text", "text": user}]
            parts += [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
            messages.append({"role": "user", "content": parts})
        else:
            messages.append({"role": "user", "content": user})
        extra: dict[str, Any] = {}
        if call.temperature is not None:
            extra["temperature"] = call.temperature
        if call.max_tokens is not None:
            extra["max_tokens"] = call.max_tokens
        if call.output_schema is not None:
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": call.name, "schema": call.output_schema, "strict": True},
            }
        response = await self._client.chat.completions.create(
            model=call.model,
            messages=messages,  # type: ignore[arg-type]  # plain dicts are what the API takes
            extra_headers=headers,
            **extra,
        )
        text = response.choices[0].message.content or ""
        usage = response.usage
        tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        if call.output_schema is None:
            return text, response.model, tokens
        try:
            return json.loads(text), response.model, tokens
        except json.JSONDecodeError as exc:
            raise ModelCallError(
                call.name, "invalid_json", f"answer is not JSON: {exc}", transient=False
            ) from exc

    async def _embed(
        self, call: ModelCall, text: str, headers: dict[str, str]
    ) -> tuple[Any, str, tuple[int, int]]:
        response = await self._client.embeddings.create(
            model=call.model, input=text, extra_headers=headers
        )
        return response.data[0].embedding, response.model, (response.usage.prompt_tokens, 0)

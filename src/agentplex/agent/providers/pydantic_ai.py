"""Hosted models through pydantic-ai: OpenAI-compatible Chat Completions and Anthropic Messages.

`openai_provider` speaks Chat Completions to OpenAI or to any compatible server (vLLM, Ollama,
llama.cpp server, ...) at ``base_url``; `anthropic_provider` speaks the Messages API. Both
stream one model step with `pydantic_ai.direct.model_request_stream` and translate its events
(`events.StreamTranslator`). The SDK clients make a single attempt (``max_retries=0``): the
agent loop retries, with backoff, what `ModelProviderError.retryable` says may succeed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from pydantic_ai.direct import model_request_stream
from pydantic_ai.exceptions import (
    ModelAPIError,
    ModelHTTPError,
    ModelQuotaExceededError,
    ModelRequestRejectedError,
)
from pydantic_ai.models import Model
from pydantic_ai.settings import ModelSettings

from agentplex.agent.providers.events import StreamTranslator
from agentplex.agent.providers.history import to_messages, to_parameters
from agentplex.core.ports import ModelEvent, ModelInfo, ModelProvider, ModelRequest
from agentplex.errors import ModelProviderError

log = logging.getLogger(__name__)

OPENAI_URL = "https://api.openai.com/v1"
_RETRYABLE_STATUS = frozenset({408, 409, 429})


class PydanticAIProvider(ModelProvider):
    """A `ModelProvider` over pydantic-ai models made by ``make_model(model_name)``.

    ``models`` are listed (the first is the default); ``pricing`` is the genai-prices provider
    id to look their costs up under (``None``: no costs, e.g. a self-hosted server).
    """

    def __init__(
        self,
        *,
        id: str,
        name: str,
        env: tuple[str, ...],
        models: Sequence[str],
        make_model: Callable[[str], Model],
        close: Callable[[], Any] | None = None,
        timeout: float = 300.0,
        pricing: str | None = None,
    ) -> None:
        self.id = id
        self.name = name
        self.env = env
        self._names = tuple(dict.fromkeys(m for m in models if m))
        self._make_model = make_model
        self._close = close
        self._timeout = timeout
        self._pricing = pricing
        self._models: dict[str, Model] = {}
        self._infos: tuple[ModelInfo, ...] | None = None

    def models(self) -> tuple[ModelInfo, ...]:
        if self._infos is None:
            self._infos = tuple(model_info(name, self._pricing) for name in self._names)
        return self._infos

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """One step of ``request.model_id``; see `ModelProvider.stream`."""
        settings: ModelSettings = {"max_retries": 0, "timeout": self._timeout}
        if request.max_output_tokens:
            settings["max_tokens"] = request.max_output_tokens
        translator = StreamTranslator()
        try:
            # leaving this block (end, error, cancellation, aclose) closes the HTTP response
            async with model_request_stream(
                self._model(request.model_id),
                to_messages(request),
                model_settings=settings,
                model_request_parameters=to_parameters(request),
                instrument=False,
            ) as response:
                async for event in response:
                    for out in translator.feed(event):
                        yield out
                final = response.get()
        except ModelAPIError as exc:
            raise provider_error(self.name, request.model_id, exc) from exc
        except (ValueError, TypeError, KeyError, RuntimeError) as exc:
            # pydantic-ai's UserError/UnexpectedModelBehavior (a RuntimeError), an answer the
            # SDK cannot parse, a history it refuses: trying again would not help
            log.warning("model call to %s:%s failed: %r", self.id, request.model_id, exc)
            raise ModelProviderError(
                f"{self.name} model {request.model_id} failed: {exc}", retryable=False
            ) from exc
        for out in translator.finish(final):
            yield out

    async def close(self) -> None:
        if self._close is not None:
            result = self._close()
            if hasattr(result, "__await__"):
                await result

    def _model(self, name: str) -> Model:
        model = self._models.get(name)
        if model is None:
            model = self._models[name] = self._make_model(name)
        return model


def openai_provider(
    *,
    api_key: str | None,
    base_url: str | None,
    models: Sequence[str],
    timeout: float = 300.0,
) -> PydanticAIProvider:
    """The OpenAI-compatible Chat Completions provider (id ``openai``). ``base_url`` alone
    (a local server that wants no key) works: a placeholder key is sent."""
    from openai import AsyncOpenAI
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.profiles.openai import OpenAIModelProfile
    from pydantic_ai.providers.openai import OpenAIProvider

    client = AsyncOpenAI(
        api_key=api_key or "not-needed",
        base_url=base_url or OPENAI_URL,
        max_retries=0,
        timeout=timeout,
    )
    provider = OpenAIProvider(openai_client=client)
    # a stream that ends without a finish_reason was cut off: fail it (retryable) rather
    # than pass a truncated answer off as complete
    profile = OpenAIModelProfile(openai_chat_streaming_requires_finish_reason=True)
    official = base_url is None or base_url.rstrip("/").startswith(OPENAI_URL)
    return PydanticAIProvider(
        id="openai",
        name="OpenAI" if official else "OpenAI-compatible",
        env=("OPENAI_API_KEY", "OPENAI_BASE_URL"),
        models=models,
        make_model=lambda name: OpenAIChatModel(name, provider=provider, profile=profile),
        close=client.close,
        timeout=timeout,
        pricing="openai" if official else None,
    )


def anthropic_provider(
    *,
    api_key: str,
    models: Sequence[str],
    base_url: str | None = None,
    timeout: float = 300.0,
) -> PydanticAIProvider:
    """The Anthropic Messages provider (id ``anthropic``); ``base_url`` defaults to the SDK's
    (``ANTHROPIC_BASE_URL`` or Anthropic's API)."""
    from anthropic import AsyncAnthropic
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.providers.anthropic import AnthropicProvider

    client = AsyncAnthropic(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)
    provider = AnthropicProvider(anthropic_client=client)
    return PydanticAIProvider(
        id="anthropic",
        name="Anthropic",
        env=("ANTHROPIC_API_KEY",),
        models=models,
        make_model=lambda name: AnthropicModel(name, provider=provider),
        close=client.close,
        timeout=timeout,
        pricing="anthropic",
    )


def provider_error(provider: str, model: str, exc: ModelAPIError) -> ModelProviderError:
    """Our error for a failed model call: retryable for 408/429/5xx, a dropped or timed-out
    connection and a stream cut off; not for a request the provider rejected (other 4xx) or
    an exhausted quota."""
    body = _body_text(exc.body)
    if isinstance(exc, ModelHTTPError):
        code = exc.status_code
        retryable = code in _RETRYABLE_STATUS or code >= 500
        detail = _error_message(exc.body) or f"HTTP {code}"
        message = f"{provider} model {model} failed with HTTP {code}: {detail}"
        status: int | None = code
    else:
        # a dropped or timed-out connection, a stream cut off, an error event in the stream
        status = None
        retryable = not isinstance(exc, ModelRequestRejectedError)
        message = f"{provider} model {model} failed: {exc.message}"
    if isinstance(exc, ModelQuotaExceededError):
        retryable = False
    return ModelProviderError(message, retryable=retryable, status_code=status, body=body)


def model_info(name: str, pricing: str | None) -> ModelInfo:
    """`ModelInfo` for model ``name``, with its context window and USD cost per million
    tokens from genai-prices when ``pricing`` names a provider it knows the model under."""
    if pricing is None:
        return ModelInfo(id=name, name=name)
    try:
        from genai_prices import Usage, calc_price

        # priced per thousand tokens, well under any long-context surcharge tier
        calc = calc_price(Usage(input_tokens=1000, output_tokens=1000), name, provider_id=pricing)
    except Exception:  # unknown model, or no price data: costs unknown
        return ModelInfo(id=name, name=name)
    return ModelInfo(
        id=name,
        name=calc.model.name or name,
        context=int(calc.model.context_window or 0),
        cost_input=float(calc.input_price) * 1000,
        cost_output=float(calc.output_price) * 1000,
    )


def _body_text(body: object) -> str | None:
    if body is None:
        return None
    if isinstance(body, str):
        return body
    try:
        return json.dumps(body, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(body)


def _error_message(body: object) -> str | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return None

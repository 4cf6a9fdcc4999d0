"""The built-in agent's model providers, made from settings, and the choice of a model.

A model is named ``provider:model`` (``openai:gpt-4o-mini``), ``provider/model``, a provider
alone (its default model: ``local``) or a model alone (the first provider that lists it).
"""

from __future__ import annotations

from collections.abc import Sequence

from agentplex.core.ports import ModelProvider
from agentplex.errors import BadRequest, ModelNotConfigured
from agentplex.settings import AgentSettings

__all__ = ["build_providers", "parse_model", "resolve_model"]


def build_providers(settings: AgentSettings) -> tuple[ModelProvider, ...]:
    """The configured providers, in this order: ``openai`` (a key or a base URL), ``anthropic``
    (a key), ``local`` (``agentplex[local]`` installed and ``local_model`` on). The default
    model of ``settings.model``, if it names one of them, is listed first by its provider."""
    from agentplex.agent.providers import local
    from agentplex.agent.providers.pydantic_ai import anthropic_provider, openai_provider

    wanted_provider, wanted_model = parse_model(settings.model) if settings.model else ("", "")
    timeout = settings.model_timeout_secs

    def listed(provider: str, models: Sequence[str]) -> list[str]:
        if wanted_provider == provider and wanted_model and wanted_model not in models:
            return [wanted_model, *models]
        return list(models)

    providers: list[ModelProvider] = []
    openai_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    if openai_key or settings.openai_base_url:
        providers.append(
            openai_provider(
                api_key=openai_key,
                base_url=settings.openai_base_url or None,
                models=listed("openai", settings.openai_models),
                timeout=timeout,
            )
        )
    if settings.anthropic_api_key and settings.anthropic_api_key.get_secret_value():
        providers.append(
            anthropic_provider(
                api_key=settings.anthropic_api_key.get_secret_value(),
                models=listed("anthropic", settings.anthropic_models),
                timeout=timeout,
            )
        )
    if settings.local_model and local.available():
        providers.append(local.LocalProvider())
    return tuple(providers)


def parse_model(spec: str) -> tuple[str, str]:
    """``(provider, model)`` of a model name; either may be ``""`` (``local`` -> ``("local",
    "")``, ``gpt-4o`` -> ``("", "gpt-4o")``: a bare word is tried as a provider, then a model)."""
    spec = spec.strip()
    cuts = [i for i in (spec.find(":"), spec.find("/")) if i >= 0]
    if not cuts:
        return "", spec
    cut = min(cuts)  # the model id may hold the other one: openai:llama3:8b, openai/org/model
    return spec[:cut].strip(), spec[cut + 1 :].strip()


def resolve_model(
    providers: Sequence[ModelProvider], spec: str | None, default: str | None = None
) -> tuple[ModelProvider, str]:
    """The provider and model id that ``spec`` (else ``default``, else the first provider's
    first model) names. Raises ModelNotConfigured when no provider is configured, BadRequest
    (listing what is) for a provider or model that is not."""
    if not providers:
        raise ModelNotConfigured()
    spec = (spec or "").strip() or (default or "").strip()
    if not spec:
        first = providers[0]
        return first, _default_model(first)
    for provider in providers:  # a model id alone, even one with ":" or "/" in it
        if any(m.id == spec for m in provider.models()):
            return provider, spec
    provider_id, model_id = parse_model(spec)
    by_id = {p.id: p for p in providers}
    if not provider_id:
        if model_id in by_id:  # a provider alone: its default model
            return by_id[model_id], _default_model(by_id[model_id])
        raise BadRequest(
            f"Unknown model {spec!r}. Available: {_available(providers)}.",
            details={"available": _available_list(providers)},
        )
    chosen = by_id.get(provider_id)
    if chosen is None:
        raise BadRequest(
            f"Model provider {provider_id!r} is not configured. Available: "
            f"{_available(providers)}.",
            details={"available": _available_list(providers)},
        )
    if not model_id:
        return chosen, _default_model(chosen)
    if not any(m.id == model_id for m in chosen.models()):
        raise BadRequest(
            f"Provider {provider_id!r} has no model {model_id!r}. Available: "
            f"{_available(providers)}.",
            details={"available": _available_list(providers)},
        )
    return chosen, model_id


def _default_model(provider: ModelProvider) -> str:
    models = provider.models()
    if not models:
        raise ModelNotConfigured(f"Model provider {provider.id!r} offers no model.")
    return models[0].id


def _available_list(providers: Sequence[ModelProvider]) -> list[str]:
    return [f"{p.id}:{m.id}" for p in providers for m in p.models()]


def _available(providers: Sequence[ModelProvider]) -> str:
    return ", ".join(_available_list(providers)) or "none"

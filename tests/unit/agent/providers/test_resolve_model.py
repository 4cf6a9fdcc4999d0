"""Choosing a model: the names a user types, what is configured, and the errors for the rest."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentplex.agent.providers import build_providers, parse_model, resolve_model
from agentplex.agent.providers import local as local_model
from agentplex.agent.scripted import ScriptedProvider
from agentplex.core.ports import ModelEvent, ModelInfo, ModelProvider, ModelRequest
from agentplex.errors import BadRequest, ModelNotConfigured
from agentplex.settings import AgentSettings


class Listed(ModelProvider):
    """A provider that only lists models."""

    def __init__(self, id: str, *models: str) -> None:
        self.id = id
        self.name = id
        self._models = tuple(ModelInfo(id=m, name=m) for m in models)

    def models(self) -> tuple[ModelInfo, ...]:
        return self._models

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        raise NotImplementedError
        yield


OPENAI = Listed("openai", "gpt-4o-mini", "gpt-4o", "llama3:8b", "meta-llama/Llama-3-8B")
LOCAL = Listed("local", "smollm2-135m-instruct")
PROVIDERS = (OPENAI, LOCAL)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("openai:gpt-4o", ("openai", "gpt-4o")),
        ("openai/gpt-4o", ("openai", "gpt-4o")),
        ("openai:llama3:8b", ("openai", "llama3:8b")),
        ("openai/meta-llama/Llama-3-8B", ("openai", "meta-llama/Llama-3-8B")),
        ("local", ("", "local")),
        (" anthropic:claude-sonnet-4-5 ", ("anthropic", "claude-sonnet-4-5")),
    ],
)
def test_parse_model(spec: str, expected: tuple[str, str]) -> None:
    assert parse_model(spec) == expected


@pytest.mark.parametrize(
    ("spec", "provider", "model"),
    [
        ("openai:gpt-4o", "openai", "gpt-4o"),
        ("openai/gpt-4o", "openai", "gpt-4o"),
        ("openai", "openai", "gpt-4o-mini"),
        ("local", "local", "smollm2-135m-instruct"),
        ("local:smollm2-135m-instruct", "local", "smollm2-135m-instruct"),
        ("gpt-4o", "openai", "gpt-4o"),
        ("llama3:8b", "openai", "llama3:8b"),
        ("meta-llama/Llama-3-8B", "openai", "meta-llama/Llama-3-8B"),
        ("openai:llama3:8b", "openai", "llama3:8b"),
    ],
)
def test_resolve_model_understands_every_way_to_name_a_model(
    spec: str, provider: str, model: str
) -> None:
    chosen, model_id = resolve_model(PROVIDERS, spec, None)
    assert (chosen.id, model_id) == (provider, model)


def test_without_a_choice_the_default_then_the_first_model_is_used() -> None:
    assert resolve_model(PROVIDERS, None, "local")[0] is LOCAL
    assert resolve_model(PROVIDERS, "", None) == (OPENAI, "gpt-4o-mini")
    assert resolve_model(PROVIDERS, "openai:gpt-4o", "local") == (OPENAI, "gpt-4o")


def test_nothing_configured_says_how_to_configure_a_model() -> None:
    with pytest.raises(ModelNotConfigured) as raised:
        resolve_model((), "openai:gpt-4o", None)
    assert raised.value.status == 400
    assert "OPENAI_API_KEY" in raised.value.message and "agentplex[local]" in raised.value.message


def test_an_unknown_provider_lists_what_is_available() -> None:
    with pytest.raises(BadRequest) as raised:
        resolve_model(PROVIDERS, "anthropic:claude-sonnet-4-5", None)
    message = raised.value.message
    assert "'anthropic' is not configured" in message
    assert "openai:gpt-4o-mini" in message and "local:smollm2-135m-instruct" in message
    assert "local:smollm2-135m-instruct" in raised.value.details["available"]


def test_an_unknown_model_lists_what_is_available() -> None:
    with pytest.raises(BadRequest, match=r"'openai' has no model 'gpt-9'.*openai:gpt-4o"):
        resolve_model(PROVIDERS, "openai:gpt-9", None)
    with pytest.raises(BadRequest, match="Unknown model 'nonsense'"):
        resolve_model(PROVIDERS, "nonsense", None)


def test_the_scripted_provider_resolves_like_any_other() -> None:
    scripted = ScriptedProvider()
    assert resolve_model((scripted,), "scripted", None) == (scripted, "scripted-model")
    assert resolve_model((scripted,), "scripted/scripted-model", None) == (
        scripted,
        "scripted-model",
    )


# --- build_providers --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def ids(settings: AgentSettings) -> list[str]:
    return [p.id for p in build_providers(settings)]


def test_nothing_is_configured_without_keys() -> None:
    assert ids(AgentSettings(local_model=False)) == []


def test_each_key_enables_its_provider() -> None:
    assert ids(AgentSettings(openai_api_key="sk-test", local_model=False)) == ["openai"]
    assert ids(AgentSettings(anthropic_api_key="sk-ant", local_model=False)) == ["anthropic"]
    both = AgentSettings(openai_api_key="sk", anthropic_api_key="sk-ant", local_model=False)
    assert ids(both) == ["openai", "anthropic"]


def test_a_base_url_alone_enables_an_openai_compatible_server() -> None:
    settings = AgentSettings(
        openai_base_url="http://127.0.0.1:11434/v1", openai_models=["llama3"], local_model=False
    )
    (provider,) = build_providers(settings)
    assert provider.id == "openai"
    assert [m.id for m in provider.models()] == ["llama3"]
    assert provider.models()[0].cost_input == 0  # a self-hosted server costs nothing per token


def test_models_are_listed_from_settings_with_openai_prices() -> None:
    settings = AgentSettings(openai_api_key="sk", local_model=False)
    (provider,) = build_providers(settings)
    models = {m.id: m for m in provider.models()}
    assert list(models) == settings.openai_models
    mini = models["gpt-4o-mini"]
    assert mini.cost_input == pytest.approx(0.15)
    assert mini.cost_output == pytest.approx(0.6)
    assert mini.context == 128_000


def test_the_default_model_is_listed_first_even_when_not_in_the_list() -> None:
    settings = AgentSettings(
        model="openai:my-finetune", openai_api_key="sk", openai_models=["gpt-4o"], local_model=False
    )
    providers = build_providers(settings)
    assert [m.id for m in providers[0].models()] == ["my-finetune", "gpt-4o"]
    assert resolve_model(providers, None, settings.model) == (providers[0], "my-finetune")


def test_the_local_model_is_offered_when_installed_and_enabled() -> None:
    assert ("local" in ids(AgentSettings())) == local_model.available()
    assert "local" not in ids(AgentSettings(local_model=False))

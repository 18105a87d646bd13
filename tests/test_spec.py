"""resolve_model: the spec strings users write (no network: nothing is called)."""

from __future__ import annotations

import sys
import types

import pytest

from ctxfold.errors import MissingAPIKeyError, ModelSpecError
from ctxfold.models import AnthropicModel, OpenAIModel, ScriptedModel, resolve_model


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-openai")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")


@pytest.fixture
def local_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stand in for ctxfold.models.local so no embedded model starts."""
    calls: list[str] = []
    fake = types.ModuleType("ctxfold.models.local")

    def load_local_model(spec: str = "local") -> ScriptedModel:
        calls.append(spec)
        return ScriptedModel(["local"], name=spec)

    fake.load_local_model = load_local_model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ctxfold.models.local", fake)
    return calls


def test_openai_names(keys: None) -> None:
    model = resolve_model("openai:gpt-5-mini")
    assert isinstance(model, OpenAIModel)
    assert (model.name, model.base_url) == ("gpt-5-mini", None)


def test_openai_compatible_server() -> None:
    model = resolve_model("openai:qwen2.5-7b@http://127.0.0.1:8000/v1")
    assert isinstance(model, OpenAIModel)
    assert model.name == "qwen2.5-7b"
    assert model.base_url == "http://127.0.0.1:8000/v1"
    model = resolve_model("  openai:org/model:tag@https://example.invalid/v1 ")
    assert isinstance(model, OpenAIModel)
    assert (model.name, model.base_url) == ("org/model:tag", "https://example.invalid/v1")


def test_anthropic(keys: None) -> None:
    model = resolve_model("anthropic:claude-sonnet-4-5")
    assert isinstance(model, AnthropicModel)
    assert model.name == "claude-sonnet-4-5"


def test_local_forms_go_to_the_local_loader(local_calls: list[str]) -> None:
    assert resolve_model("local").name == "local"
    assert resolve_model("local:qwen3-0.6b").name == "local:qwen3-0.6b"
    assert local_calls == ["local", "local:qwen3-0.6b"]


def test_model_objects_pass_through() -> None:
    model = ScriptedModel(["x"])
    assert resolve_model(model) is model


def test_missing_keys() -> None:
    with pytest.raises(MissingAPIKeyError, match="OPENAI_API_KEY"):
        resolve_model("openai:gpt-5-mini")
    with pytest.raises(MissingAPIKeyError, match="ANTHROPIC_API_KEY"):
        resolve_model("anthropic:claude-sonnet-4-5")


def test_unknown_spec_lists_the_accepted_forms() -> None:
    with pytest.raises(ModelSpecError) as info:
        resolve_model("gpt:x")
    assert str(info.value) == (
        "unknown model spec 'gpt:x': use 'local', 'local:NAME', 'openai:NAME', "
        "'openai:NAME@http://host:port/v1', 'anthropic:NAME', or a Model object"
        " (installed providers: anthropic, local, openai)"  # issue 14: names the installed ones
    )


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "gpt-4o",
        "openai",
        "openai:",
        "openai:  ",
        "anthropic:",
        "local:",
        "openai:@http://127.0.0.1:8000/v1",
        "openai:m@127.0.0.1:8000/v1",
        "openai:m@ftp://host/v1",
        "openai:m@http://",
        "huggingface:gpt2",
    ],
)
def test_bad_specs(spec: str, keys: None) -> None:
    with pytest.raises(ModelSpecError):
        resolve_model(spec)


def test_non_models_are_refused() -> None:
    with pytest.raises(ModelSpecError, match="unknown model spec 42"):
        resolve_model(42)  # type: ignore[arg-type]


def test_spec_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        resolve_model("nope:x")

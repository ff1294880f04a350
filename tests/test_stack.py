"""build_stack: planning, dependency order, skipped APIs, errors naming their path, clean shutdown."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from llama_batches import build_stack
from llama_batches.api import Api
from llama_batches.errors import ConfigError, DependencyError, StackError, UnknownProviderError
from llama_batches.principal import ANONYMOUS, current_principal
from llama_batches.registry import ProviderDeps, ProviderKind, ProviderRegistry, ProviderSpec, default_registry

from .test_provider_localfs import files_config

DATA = Path(__file__).parent / "data"
EVENTS: list[str] = []


class RecorderConfig(BaseModel):
    name: str = "x"


async def _accept_anything(self: object, *args: Any, **kwargs: Any) -> None:
    return None


class Recorder:
    """A provider of the batches or files API that records its lifecycle in EVENTS (its API methods do nothing)."""

    create_batch = retrieve_batch = cancel_batch = list_batches = _accept_anything
    openai_upload_file = openai_list_files = openai_retrieve_file = _accept_anything
    openai_retrieve_file_content = openai_delete_file = _accept_anything

    def __init__(self, name: str, deps: ProviderDeps) -> None:
        self.name = name
        self.deps = deps
        EVENTS.append(f"start {name}")

    async def shutdown(self) -> None:
        EVENTS.append(f"stop {self.name}")


async def get_provider_impl(config: RecorderConfig, deps: ProviderDeps) -> Recorder:
    if config.name == "boom":
        raise RuntimeError("cannot start")
    return Recorder(config.name, deps)


def recorder_registry(deps: dict[Api, tuple[Api, ...]]) -> ProviderRegistry:
    """A registry with an ``inline::recorder`` for the given APIs, with the given dependencies."""
    registry = ProviderRegistry()
    for api, needs in deps.items():
        registry.register(
            ProviderSpec(
                api=api,
                kind=ProviderKind.inline,
                name="recorder",
                config_class=RecorderConfig,
                module=__name__,
                api_dependencies=needs,
            )
        )
    return registry


def recorder_config(*apis: str, names: dict[str, str] | None = None) -> dict[str, Any]:
    names = names or {}
    return {
        "apis": list(apis),
        "providers": {
            api: [{"provider_id": api, "provider_type": "inline::recorder", "config": {"name": names.get(api, api)}}]
            for api in apis
        },
    }


def test_a_dependency_cycle_is_named() -> None:
    registry = recorder_registry({Api.batches: (Api.files,), Api.files: (Api.batches,)})
    with pytest.raises(DependencyError, match="cycle between APIs: batches -> files -> batches"):
        build_stack(recorder_config("batches", "files"), registry=registry)


def test_a_missing_dependency_names_the_provider_and_the_api() -> None:
    registry = recorder_registry({Api.batches: (Api.files,)})
    with pytest.raises(DependencyError) as info:
        build_stack(recorder_config("batches"), registry=registry)
    assert "providers.batches[0] (inline::recorder) needs the files API" in str(info.value)


def test_models_needs_an_inference_provider() -> None:
    registry = recorder_registry({Api.batches: (Api.models,)})
    with pytest.raises(DependencyError, match="needs the models API"):
        build_stack(recorder_config("batches"), registry=registry)


def test_dependencies_are_planned_first() -> None:
    registry = recorder_registry({Api.batches: (Api.files,), Api.files: ()})
    stack = build_stack(recorder_config("batches", "files"), registry=registry)
    assert [p.api for p in stack.plan] == [Api.files, Api.batches]


def test_an_unknown_provider_type_is_an_error_naming_the_path() -> None:
    config = {"providers": {"files": [{"provider_id": "f", "provider_type": "inline::nope", "config": {}}]}}
    with pytest.raises(UnknownProviderError) as info:
        build_stack(config)
    assert info.value.path == "providers.files[0].provider_type"
    assert "inline::localfs" in str(info.value)


def test_a_wrong_provider_config_field_names_the_path(tmp_path: Path) -> None:
    config = files_config(tmp_path, {"type": "sql_memory"})
    config["providers"]["files"][0]["config"]["max_file_size_bytes"] = "huge"
    with pytest.raises(ConfigError) as info:
        build_stack(config)
    assert info.value.path == "providers.files[0].config.max_file_size_bytes"


def test_two_providers_for_a_single_provider_api_are_refused(tmp_path: Path) -> None:
    config = files_config(tmp_path, {"type": "sql_memory"})
    config["providers"]["files"].append(dict(config["providers"]["files"][0], provider_id="second"))
    with pytest.raises(ConfigError) as info:
        build_stack(config)
    assert info.value.path == "providers.files[1]"
    assert "providers.files[0] is already enabled" in str(info.value)


def test_apis_and_provider_types_llama_batches_lacks_are_skipped_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = files_config(tmp_path, {"type": "sql_memory"})
    config["apis"] += ["safety", "vector_io"]
    config["providers"]["safety"] = [{"provider_id": "lg", "provider_type": "inline::llama-guard"}]
    config["providers"]["inference"] = [{"provider_id": "fw", "provider_type": "remote::fireworks"}]
    config["apis"].append("inference")
    with caplog.at_level(logging.INFO, logger="llama_batches.stack"):
        stack = build_stack(config)
    assert [p.spec.provider_type for p in stack.plan] == ["inline::localfs"]
    lines = [r.getMessage() for r in caplog.records]
    assert sum("'safety'" in line for line in lines) == 1
    assert sum("'vector_io'" in line for line in lines) == 1
    assert sum("remote::fireworks" in line for line in lines) == 1


async def test_providers_stop_in_reverse_order_and_a_failed_start_stops_the_started() -> None:
    registry = recorder_registry({Api.batches: (Api.files,), Api.files: ()})
    EVENTS.clear()
    stack = build_stack(recorder_config("batches", "files", names={"batches": "boom"}), registry=registry)
    with pytest.raises(RuntimeError, match="cannot start"):
        await stack.start()
    assert EVENTS == ["start files", "stop files"]


async def test_the_starter_config_builds_batches_files_inference_and_models(tmp_path: Path) -> None:
    env = {"SQLITE_STORE_DIR": str(tmp_path), "FILES_STORAGE_DIR": str(tmp_path / "files")}
    async with build_stack(DATA / "llama-stack-starter.yaml", env=env) as stack:
        assert set(stack.impls) >= {Api.batches, Api.files, Api.inference, Api.models}
        assert "openai" in stack.providers
        assert (await stack.files.openai_list_files()).data == []
    assert stack.impls == {}


async def test_a_stack_without_an_api_says_so(tmp_path: Path) -> None:
    async with build_stack(files_config(tmp_path, {"type": "sql_memory"})) as stack:
        with pytest.raises(StackError, match="no batches API"):
            _ = stack.batches


async def test_as_principal_scopes_the_block(tmp_path: Path) -> None:
    async with build_stack(files_config(tmp_path, {"type": "sql_memory"})) as stack:
        async with stack.as_principal("alice"):
            assert current_principal() == "alice"
        assert current_principal() == ANONYMOUS


def test_default_registry_is_fresh_each_time() -> None:
    assert default_registry() is not default_registry()


INFERENCE_AFTER_DISABLED = """\
version: 2
apis: [inference, vector_io]
providers:
  inference:
  - provider_id: ${env.VLLM_URL:+vllm}
    provider_type: remote::vllm
    config: {base_url: "${env.VLLM_URL:=}"}
  - provider_id: __disabled__
    provider_type: remote::ollama
  - provider_id: openai
    provider_type: remote::openai
    config: {base_url: "http://127.0.0.1:9/v1", timeout_s: TIMEOUT}
  - provider_id: fireworks
    provider_type: remote::fireworks
    config: {api_key: "${env.FIREWORKS_API_KEY:=}"}
  vector_io:
  - provider_id: faiss
    provider_type: inline::faiss
  safety:
  - provider_id: llama-guard
    provider_type: inline::llama-guard
registered_resources:
  models:
  - {model_id: gpt, provider_id: openai, provider_model_id: gpt-4o}
  - {model_id: llama-fw, provider_id: fireworks, provider_model_id: accounts/fireworks/models/llama}
  - {model_id: embedder, provider_id: faiss}
  - {model_id: guard, provider_id: llama-guard}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_skipped_providers_are_reported_with_their_index_in_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="llama_batches"):
        stack = build_stack(write(tmp_path, INFERENCE_AFTER_DISABLED.replace("TIMEOUT", "30")), env={})
    assert [p.path for p in stack.plan] == ["providers.inference[2]"]
    lines = [r.getMessage() for r in caplog.records]
    assert "skipping providers.inference[3] (remote::fireworks): llama-batches does not implement it" in lines


def test_a_provider_config_error_after_disabled_entries_names_the_entry_of_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build_stack(write(tmp_path, INFERENCE_AFTER_DISABLED.replace("TIMEOUT", "slow")), env={})
    assert info.value.path == "providers.inference[2].config.timeout_s"


def test_models_on_skipped_providers_are_skipped_with_a_warning_naming_model_and_provider(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="llama_batches"):
        stack = build_stack(write(tmp_path, INFERENCE_AFTER_DISABLED.replace("TIMEOUT", "30")), env={})
    assert [(m.path, m.provider_id) for m in stack.registered_models] == [("registered_resources.models[0]", "openai")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    fireworks, faiss, guard = warnings
    assert fireworks.startswith("skipping registered_resources.models[1] (model 'llama-fw'): its provider 'fireworks'")
    assert "remote::fireworks, providers.inference[3]" in fireworks
    assert "model 'embedder'" in faiss and "'faiss' (inline::faiss, providers.vector_io[0])" in faiss
    assert "model 'guard'" in guard and "does not implement the safety API" in guard


def test_a_model_on_a_provider_of_another_api_is_a_config_error(tmp_path: Path) -> None:
    config = files_config(tmp_path, {"type": "sql_memory"})
    config["registered_resources"] = {"models": [{"model_id": "m", "provider_id": "localfs"}]}
    with pytest.raises(ConfigError) as info:
        build_stack(config)
    assert info.value.path == "registered_resources.models[0].provider_id"
    assert "'localfs' is a files provider, not an inference provider" in info.value.problem


def test_a_model_on_a_provider_the_config_lacks_is_still_a_config_error(tmp_path: Path) -> None:
    text = INFERENCE_AFTER_DISABLED.replace("TIMEOUT", "30").replace("provider_id: faiss}", "provider_id: faiss2}")
    with pytest.raises(ConfigError) as info:
        build_stack(write(tmp_path, text), env={})
    assert info.value.path == "registered_resources.models[2].provider_id"
    assert "unknown inference provider 'faiss2'; configured: openai" in info.value.problem

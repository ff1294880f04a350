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

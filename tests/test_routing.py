"""The model registry and the inference router, over real providers: two remote::openai on two fake backends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from llama_batches import build_stack
from llama_batches.api import Endpoint
from llama_batches.config import RegisteredModel
from llama_batches.errors import ConfigError, NotFoundError
from llama_batches.routing import REFRESH_INTERVAL_S, ModelRegistry, PlannedModel
from llama_batches.stack import Stack

from .conftest import openai_provider, run_config
from .fake_backend import FakeBackend


@pytest.fixture
async def two_backends() -> AsyncIterator[tuple[FakeBackend, FakeBackend]]:
    async with FakeBackend(models=["shared", "only-a"]) as a, FakeBackend(models=["shared", "only-b"]) as b:
        yield a, b


@pytest.fixture
async def stack(tmp_path: Path, two_backends: tuple[FakeBackend, FakeBackend]) -> AsyncIterator[Stack]:
    a, b = two_backends
    config = run_config(
        tmp_path, openai_provider(a.base_url, provider_id="a"), openai_provider(b.base_url, provider_id="b")
    )
    config["registered_resources"]["models"] = [
        {"model_id": "alias", "provider_id": "b", "provider_model_id": "only-b"},
    ]
    async with build_stack(config) as built:
        yield built


async def test_models_are_known_by_provider_prefix_and_by_unique_plain_name(stack: Stack) -> None:
    names = {m.identifier: (m.provider_id, m.provider_resource_id) for m in await stack.models.list_models()}
    assert names["only-a"] == ("a", "only-a") and names["b/only-b"] == ("b", "only-b")
    assert names["a/shared"] == ("a", "shared") and names["b/shared"] == ("b", "shared")
    assert "shared" not in names  # two providers run it: ambiguous
    assert names["alias"] == ("b", "only-b")
    listed = await stack.models.openai_list_models()
    assert listed.object == "list" and {m.id for m in listed.data} == set(names)


async def test_calls_go_to_the_provider_that_runs_the_model(
    stack: Stack, two_backends: tuple[FakeBackend, FakeBackend]
) -> None:
    a, b = two_backends
    await stack.inference.openai_chat_completion("b/shared", [{"role": "user", "content": "to b"}])
    await stack.inference.openai_chat_completion("only-a", [{"role": "user", "content": "to a"}])
    assert a.seen == {"to a": 1} and b.seen == {"to b": 1}


async def test_the_raw_path_rewrites_the_model_only_when_the_provider_names_it_otherwise(
    stack: Stack, two_backends: tuple[FakeBackend, FakeBackend]
) -> None:
    _, b = two_backends
    body = orjson.dumps({"model": "alias", "messages": [{"role": "user", "content": "raw"}]})
    answer = await stack.inference.raw_request(Endpoint.chat_completions, "alias", body)
    assert answer.status_code == 200 and orjson.loads(answer.body)["model"] == "only-b"
    assert b.seen == {"raw": 1}


async def test_an_unknown_model_is_not_found_naming_the_field(stack: Stack) -> None:
    with pytest.raises(NotFoundError) as info:
        await stack.models.get_model("nope")
    assert (info.value.code, info.value.param) == ("model_not_found", "model")


async def test_concurrent_lookups_share_one_refresh(stack: Stack) -> None:
    found = await asyncio.gather(*(stack.models.get_model("only-a") for _ in range(20)))
    assert {m.provider_id for m in found} == {"a"}


async def test_a_provider_that_cannot_list_its_models_is_skipped(tmp_path: Path, fake_backend: FakeBackend) -> None:
    down = FakeBackend()
    await down.start()
    url = down.base_url
    await down.stop()
    config = run_config(tmp_path, openai_provider(fake_backend.base_url), openai_provider(url, provider_id="down"))
    async with build_stack(config) as stack:
        names = {m.identifier for m in await stack.models.list_models()}
    assert "fake-model" in names and not any(n.startswith("down/") for n in names)


def test_a_registered_model_naming_an_unknown_provider_is_a_config_error(tmp_path: Path) -> None:
    config = run_config(tmp_path, openai_provider("http://127.0.0.1:9/v1"))
    config["registered_resources"]["models"] = [{"model_id": "m", "provider_id": "ghost"}]
    with pytest.raises(ConfigError) as info:
        build_stack(config)
    assert info.value.path == "registered_resources.models[0].provider_id"


async def test_a_model_refresh_cut_short_is_asked_again_not_taken_for_no_models() -> None:
    """A lookup cancelled while the registry asks the providers (a batch stopped during validation) must not leave
    the registry believing no model exists: the next lookup asks again."""
    from llama_batches_openai.config import OpenAICompatConfig
    from llama_batches_openai.inference import OpenAICompatInference

    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = OpenAICompatInference(OpenAICompatConfig(base_url=f"http://127.0.0.1:{port}/v1", timeout_s=30))
    registry = ModelRegistry({"slow": provider})
    try:
        for _ in range(2):  # before the fix, the second lookup answered NotFoundError at once
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await registry.get_model("anything")
    finally:
        await provider.shutdown()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


ALIASES = """\
version: 2
apis: [inference]
providers:
  inference:
  - provider_id: ${env.VLLM_URL:+vllm}
    provider_type: remote::vllm
    config: {base_url: "${env.VLLM_URL:=}"}
  - provider_id: fireworks
    provider_type: remote::fireworks
  - provider_id: a
    provider_type: remote::openai
    config: {base_url: "A_URL", api_key: test}
  - provider_id: b
    provider_type: remote::openai
    config: {base_url: "B_URL", api_key: test}
registered_resources:
  models:
  - metadata: {}
    model_id: claude-haiku-4-5-20251001
    provider_id: all
    provider_model_id: auto
    model_type: llm
  - {model_id: pinned, provider_id: all, provider_model_id: a-second}
  - {model_id: on-b, provider_id: b, provider_model_id: auto}
"""


async def test_provider_all_is_the_first_inference_provider_and_auto_its_first_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with FakeBackend(models=["a-first", "a-second"]) as a, FakeBackend(models=["b-first", "b-second"]) as b:
        path = tmp_path / "run.yaml"
        path.write_text(ALIASES.replace("A_URL", a.base_url).replace("B_URL", b.base_url))
        with caplog.at_level(logging.INFO, logger="llama_batches"):
            async with build_stack(path, env={}) as stack:
                found = {
                    m.identifier: (m.provider_id, m.provider_resource_id) for m in await stack.models.list_models()
                }
                answer = await stack.inference.openai_chat_completion(
                    "claude-haiku-4-5-20251001", [{"role": "user", "content": "hi"}]
                )
        assert found["claude-haiku-4-5-20251001"] == ("a", "a-first")
        assert found["pinned"] == ("a", "a-second") and found["on-b"] == ("b", "b-first")
        assert answer.model == "a-first" and a.seen == {"hi": 1} and b.seen == {}
    lines = [r.getMessage() for r in caplog.records]
    assert (
        "registered_resources.models[0]: model 'claude-haiku-4-5-20251001' (provider_id: all) runs on 'a', "
        "the first inference provider"
    ) in lines
    assert (
        "registered_resources.models[2]: model 'on-b' (provider_model_id: auto) is 'b-first' on inference provider 'b'"
    ) in lines


async def test_an_auto_model_is_resolved_once_its_provider_lists_a_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from llama_batches_openai.config import OpenAICompatConfig
    from llama_batches_openai.inference import OpenAICompatInference

    now = [0.0]
    async with FakeBackend(models=[]) as backend:
        provider = OpenAICompatInference(OpenAICompatConfig(base_url=backend.base_url, api_key="test"))
        entry = RegisteredModel(model_id="claude", provider_id="p", provider_model_id="auto")
        registry = ModelRegistry(
            {"p": provider}, [PlannedModel("registered_resources.models[4]", entry)], clock=lambda: now[0]
        )
        try:
            with caplog.at_level(logging.WARNING, logger="llama_batches.routing"):
                for _ in range(2):
                    with pytest.raises(NotFoundError):
                        await registry.get_model("claude")
                    now[0] += REFRESH_INTERVAL_S
            warned = [r.getMessage() for r in caplog.records]
            assert warned == [
                "registered_resources.models[4]: model 'claude' (provider_model_id: auto) has no model yet: "
                "provider 'p' lists none"
            ]  # once, not at every refresh
            backend.models[:] = ["late", "later"]
            model = await registry.get_model("claude")
            backend.models[:] = ["other"]
            now[0] += REFRESH_INTERVAL_S
            await registry.refresh()
            again = await registry.get_model("claude")
        finally:
            await provider.shutdown()
    assert (model.provider_id, model.provider_resource_id) == ("p", "late")
    assert again.provider_resource_id == "late"  # resolved once, as llama-stack does at registration


async def test_an_auto_model_that_is_not_an_llm_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = run_config(tmp_path, openai_provider("http://127.0.0.1:9/v1"))
    config["registered_resources"]["models"] = [
        {"model_id": "embed", "provider_id": "all", "provider_model_id": "auto", "model_type": "embedding"}
    ]
    with caplog.at_level(logging.WARNING, logger="llama_batches.routing"):
        stack = build_stack(config)
    assert stack.registered_models == []
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith("skipping registered_resources.models[0] (model 'embed'): provider_model_id 'auto'")


def test_provider_all_without_an_inference_provider_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = run_config(tmp_path)
    config["providers"]["inference"] = [{"provider_id": "groq", "provider_type": "remote::groq"}]
    config["registered_resources"]["models"] = [
        {"model_id": "claude", "provider_id": "all", "provider_model_id": "auto"}
    ]
    with caplog.at_level(logging.WARNING, logger="llama_batches.routing"):
        stack = build_stack(config)
    assert stack.registered_models == []
    assert [r.getMessage() for r in caplog.records] == [
        "skipping registered_resources.models[0] (model 'claude'): llama-batches runs no inference provider"
    ]


def test_a_model_whose_api_is_not_listed_is_skipped_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = run_config(tmp_path, openai_provider("http://127.0.0.1:9/v1"))
    config["apis"] = ["files"]
    config["registered_resources"]["models"] = [{"model_id": "m", "provider_id": "fake"}]
    with caplog.at_level(logging.WARNING, logger="llama_batches.routing"):
        stack = build_stack(config)
    assert stack.registered_models == []
    [warning] = [r.getMessage() for r in caplog.records]
    assert "model 'm'): its provider 'fake' (remote::openai, providers.inference[0])" in warning
    assert warning.endswith("the inference API is not listed in 'apis'")

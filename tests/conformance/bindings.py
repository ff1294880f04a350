"""What each registered provider needs to be built for its API's conformance suite.

``tests/conformance/test_registered_providers.py`` binds every provider of ``default_registry()`` to the suite of
its API through :data:`BINDINGS`. A provider registered through the entry-point group without a factory here fails
that module (see :func:`unbound`), so a new provider cannot go untested silently: add one line to the table.

A factory takes the :class:`Needs` of a test (a directory and the running fake OpenAI-compatible backend) and is an
async context manager giving what the suite's fixture is: a :class:`BatchesEnv` for batches, a ``Files`` for files,
an :class:`InferenceUnderTest` for inference.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from llama_batches import build_stack
from llama_batches.api import Api, Files, InferenceProvider
from llama_batches.registry import ProviderDeps, ProviderRegistry, default_registry, instantiate_provider
from llama_batches_llama_cpp.config import DEFAULT_MODEL_ID

from ..conftest import openai_provider, run_config
from ..fake_backend import FakeBackend
from ..server_process import ServerProcess
from .batches import BatchesConformance, BatchesEnv
from .files import FilesConformance
from .inference import InferenceConformance

__all__ = ["BINDINGS", "SUITES", "Binding", "InferenceUnderTest", "Needs", "unbound"]

SUITES: Mapping[Api, type] = {
    Api.batches: BatchesConformance,
    Api.files: FilesConformance,
    Api.inference: InferenceConformance,
}


@dataclass(frozen=True)
class Needs:
    """What a factory may use: a fresh directory and the fake backend (models ``fake-model``, ``fake-embed``)."""

    directory: Path
    backend: FakeBackend


@dataclass(frozen=True)
class InferenceUnderTest:
    """An inference provider and the models the suite calls on it."""

    provider: InferenceProvider
    model_id: str
    embedding_model_id: str


Factory = Callable[[Needs], AbstractAsyncContextManager[Any]]


@dataclass(frozen=True)
class Binding:
    """A provider's factory, the marks its tests carry (``model`` for a provider that loads a real model) and the
    optional module it needs (its tests are skipped, saying so, when that module is not installed)."""

    factory: Factory
    marks: tuple[pytest.MarkDecorator, ...] = ()
    requires: str | None = None


def _reference_config(directory: Path, backend: FakeBackend) -> dict[str, Any]:
    settings = {"kvstore": {"backend": "sql_default", "namespace": "batches"}, "retry_initial_delay_s": 0.01}
    batches = [{"provider_id": "reference", "provider_type": "inline::reference", "config": settings}]
    return run_config(directory, openai_provider(backend.base_url), extra_providers={"batches": batches})


@asynccontextmanager
async def reference_batches(needs: Needs) -> AsyncIterator[BatchesEnv]:
    """inline::reference on SQLite, with localfs files and the fake backend."""
    async with build_stack(_reference_config(needs.directory, needs.backend)) as stack:
        yield BatchesEnv(stack.batches, stack.files, needs.backend)


@asynccontextmanager
async def localfs_files(needs: Needs) -> AsyncIterator[Files]:
    """inline::localfs on SQLite (the rest of the stack is the run config's default)."""
    config = run_config(needs.directory)
    async with build_stack({**config, "apis": ["files"]}) as stack:
        yield stack.files


def _front_config(directory: Path, remote_url: str) -> dict[str, Any]:
    remote = {"base_url": remote_url, "api_key": "front-key", "timeout_s": 10.0}
    store = {"backend": "kv_default", "namespace": "front"}
    return {
        "version": 2,
        "apis": ["batches", "files"],
        "providers": {
            "batches": [
                {"provider_id": "remote", "provider_type": "remote::passthrough", "config": {**remote, "ledger": store}}
            ],
            "files": [
                {
                    "provider_id": "remote-files",
                    "provider_type": "remote::passthrough",
                    "config": {**remote, "ownership": store},
                }
            ],
        },
        "storage": {"backends": {"kv_default": {"type": "kv_sqlite", "db_path": str(directory / "front.db")}}},
    }


@asynccontextmanager
async def passthrough_front(needs: Needs) -> AsyncIterator[BatchesEnv]:
    """remote::passthrough batches and files, in front of a llama-batches server running the reference engine."""
    remote_dir = needs.directory / "remote"
    remote_dir.mkdir()
    async with ServerProcess(_reference_config(remote_dir, needs.backend), remote_dir) as remote:
        stack = build_stack(_front_config(needs.directory, remote.base_url))
        async with stack:
            yield BatchesEnv(stack.batches, stack.files, needs.backend)


@asynccontextmanager
async def passthrough_files(needs: Needs) -> AsyncIterator[Files]:
    async with passthrough_front(needs) as env:
        yield env.files


def built_inference(
    provider_type: str, config: Callable[[Needs], dict[str, Any]], model_id: str, embedding_model_id: str
) -> Factory:
    """A factory building ``provider_type`` as a stack does: its registered spec, its config class, its factory."""

    @asynccontextmanager
    async def factory(needs: Needs) -> AsyncIterator[InferenceUnderTest]:
        spec = default_registry().get(Api.inference, provider_type)
        settings = spec.config_class.model_validate(config(needs))
        impl = cast(InferenceProvider, await instantiate_provider(spec, settings, ProviderDeps({})))
        try:
            yield InferenceUnderTest(impl, model_id, embedding_model_id)
        finally:
            close = getattr(impl, "shutdown", None)
            if close is not None:
                await close()

    return factory


def _on_fake_backend(needs: Needs) -> dict[str, Any]:
    return {"base_url": needs.backend.base_url, "api_key": "test", "max_retries": 0}


def _smollm2(needs: Needs) -> dict[str, Any]:
    return {"n_ctx": 512}


BINDINGS: Mapping[tuple[Api, str], Binding] = {
    (Api.batches, "inline::reference"): Binding(reference_batches),
    (Api.batches, "remote::passthrough"): Binding(passthrough_front),
    (Api.files, "inline::localfs"): Binding(localfs_files),
    (Api.files, "remote::passthrough"): Binding(passthrough_files),
    **{
        (Api.inference, provider_type): Binding(
            built_inference(provider_type, _on_fake_backend, "fake-model", "fake-embed")
        )
        for provider_type in ("remote::openai", "remote::vllm", "remote::ollama")
    },
    (Api.inference, "inline::llama-cpp"): Binding(
        built_inference("inline::llama-cpp", _smollm2, DEFAULT_MODEL_ID, DEFAULT_MODEL_ID),
        marks=(pytest.mark.model,),
        requires="llama_cpp",
    ),
}


def unbound(registry: ProviderRegistry) -> list[str]:
    """Every provider of ``registry`` that no suite and factory test, as ``<api> <provider_type>``."""
    return [
        f"{api.value} {provider_type}"
        for api, provider_type in sorted(registry.specs)
        if api not in SUITES or (api, provider_type) not in BINDINGS
    ]

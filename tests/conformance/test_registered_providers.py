"""Every provider registered through the entry-point group, bound to its API's conformance suite.

The parameters come from ``default_registry()``, not from a list kept by hand; how to build each provider is in
``bindings.BINDINGS``. A registered provider without a binding fails here (by name), never goes untested.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from _pytest.mark import ParameterSet
from pydantic import BaseModel

from llama_batches.api import Api, Files, InferenceProvider
from llama_batches.registry import ProviderKind, ProviderRegistry, ProviderSpec, default_registry

from ..fake_backend import FakeBackend
from .batches import BatchesConformance, BatchesEnv
from .bindings import BINDINGS, InferenceUnderTest, Needs, unbound
from .files import FilesConformance
from .inference import InferenceConformance

REGISTRY = default_registry()


def registered(api: Api) -> list[ParameterSet]:
    """One parameter per provider_type registered for ``api`` (aliases are the same provider), with its marks."""
    keys = [key for key in sorted(REGISTRY.specs) if key[0] == api]
    return [pytest.param(key[1], id=key[1], marks=BINDINGS[key].marks if key in BINDINGS else ()) for key in keys]


@asynccontextmanager
async def built(api: Api, provider_type: str, directory: Path, backend: FakeBackend) -> AsyncIterator[Any]:
    binding = BINDINGS.get((api, provider_type))
    if binding is None:
        pytest.fail(
            f"{api.value} provider {provider_type} is registered but has no factory in tests/conformance/bindings.py"
        )
    if binding.requires:
        pytest.importorskip(binding.requires, reason=f"{provider_type} needs {binding.requires} (its extra)")
    async with binding.factory(Needs(directory, backend)) as under_test:
        yield under_test


class TestRegisteredBatches(BatchesConformance):
    @pytest.fixture(params=registered(Api.batches))
    async def env(
        self, request: pytest.FixtureRequest, tmp_path: Path, fake_backend: FakeBackend
    ) -> AsyncIterator[BatchesEnv]:
        async with built(Api.batches, request.param, tmp_path, fake_backend) as env:
            yield env


class TestRegisteredFiles(FilesConformance):
    @pytest.fixture(params=registered(Api.files))
    async def files_impl(
        self, request: pytest.FixtureRequest, tmp_path: Path, fake_backend: FakeBackend
    ) -> AsyncIterator[Files]:
        async with built(Api.files, request.param, tmp_path, fake_backend) as files:
            yield files


class TestRegisteredInference(InferenceConformance):
    @pytest.fixture(params=registered(Api.inference))
    async def under_test(
        self, request: pytest.FixtureRequest, tmp_path: Path, fake_backend: FakeBackend
    ) -> AsyncIterator[InferenceUnderTest]:
        async with built(Api.inference, request.param, tmp_path, fake_backend) as under_test:
            yield under_test

    @pytest.fixture
    def inference_provider(self, under_test: InferenceUnderTest) -> InferenceProvider:
        return under_test.provider

    @pytest.fixture
    def model_id(self, under_test: InferenceUnderTest) -> str:
        return under_test.model_id

    @pytest.fixture
    def embedding_model_id(self, under_test: InferenceUnderTest) -> str:
        return under_test.embedding_model_id


def test_every_registered_provider_is_bound_to_its_suite() -> None:
    missing = unbound(REGISTRY)
    assert not missing, f"registered providers with no conformance binding (add them to bindings.BINDINGS): {missing}"


def test_every_binding_is_a_registered_provider() -> None:
    assert set(BINDINGS) <= set(REGISTRY.specs), set(BINDINGS) - set(REGISTRY.specs)


class NewConfig(BaseModel):
    pass


def test_a_newly_registered_provider_without_a_binding_is_caught() -> None:
    registry = ProviderRegistry()
    for spec in REGISTRY.specs.values():
        registry.register(spec)
    registry.register(
        ProviderSpec(api=Api.files, kind=ProviderKind.remote, name="new", config_class=NewConfig, module="json")
    )
    registry.register(
        ProviderSpec(api=Api.models, kind=ProviderKind.inline, name="catalog", config_class=NewConfig, module="json")
    )
    assert unbound(registry) == ["files remote::new", "models inline::catalog"]

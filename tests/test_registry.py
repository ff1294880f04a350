"""The registry: entry-point discovery (with a real distribution on sys.path), lazy import, compliance checks."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from llama_batches import build_stack
from llama_batches.api import Api, FilePurpose, Files
from llama_batches.errors import (
    MissingExtraError,
    ProtocolComplianceError,
    ProviderRegistrationError,
    UnknownProviderError,
)
from llama_batches.registry import (
    ProviderDeps,
    ProviderKind,
    ProviderRegistry,
    ProviderSpec,
    check_compliance,
    default_registry,
    instantiate_provider,
)

from .conformance.files import chunks, read_all

ACME_PROVIDER = '''
"""A third-party files provider: content in a dict, rows in the stack's storage."""
from __future__ import annotations

from pydantic import BaseModel

from llama_batches.api import Api
from llama_batches.registry import ProviderKind, ProviderSpec


class AcmeConfig(BaseModel):
    greeting: str = "hi"


PROVIDER_SPECS = ProviderSpec(
    api=Api.files, kind=ProviderKind.remote, name="acme", config_class=AcmeConfig, module="acme_files.impl"
)
'''

ACME_IMPL = """
from __future__ import annotations

from llama_batches.storage import MemoryDatabase
from llama_batches_localfs.config import LocalfsFilesImplConfig
from llama_batches_localfs.files import LocalfsFilesImpl
from llama_batches.api import FileObject


async def get_provider_impl(config, deps):
    table = await MemoryDatabase().table("acme", FileObject)
    storage_dir = __import__("tempfile").mkdtemp(prefix="acme-")
    impl = LocalfsFilesImpl(
        LocalfsFilesImplConfig(storage_dir=storage_dir, metadata_store={"backend": "x", "table_name": "acme"}), table
    )
    impl.greeting = config.greeting
    await impl.initialize()
    return impl
"""


@pytest.fixture
def acme_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real distribution (package + .dist-info with an entry point) on sys.path, outside this repo."""
    site = tmp_path / "site"
    package = site / "acme_files"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(ACME_PROVIDER))
    (package / "impl.py").write_text(textwrap.dedent(ACME_IMPL))
    info = site / "acme_files-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-files\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[llama_batches.providers]\nacme = acme_files:PROVIDER_SPECS\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in [m for m in sys.modules if m.startswith("acme_files")]:
        del sys.modules[name]


def acme_config(provider_type: str) -> dict[str, Any]:
    return {
        "apis": ["files"],
        "providers": {"files": [{"provider_id": "acme", "provider_type": provider_type, "config": {"greeting": "yo"}}]},
    }


def test_built_in_providers_are_found_through_the_entry_point_group() -> None:
    registry = default_registry()
    assert {"inline::localfs"} <= set(registry.known(Api.files))
    assert {"inline::llama-cpp", "remote::openai", "remote::vllm", "remote::ollama"} <= set(
        registry.known(Api.inference)
    )
    assert registry.get(Api.files, "inline::localfs").module == "llama_batches_localfs"


async def test_a_third_party_provider_registers_and_serves_through_build_stack(acme_distribution: Path) -> None:
    assert "acme_files.impl" not in sys.modules
    async with build_stack(acme_config("remote::acme")) as stack:
        assert "acme_files.impl" in sys.modules  # imported only when the stack built the provider
        files: Files = stack.files
        assert vars(files)["greeting"] == "yo"
        created = await files.openai_upload_file(chunks([b'{"a": 1}\n']), FilePurpose.batch, "in.jsonl")
        assert await read_all(files, created.id) == b'{"a": 1}\n'


def test_a_wrong_provider_type_lists_the_known_ones(acme_distribution: Path) -> None:
    with pytest.raises(UnknownProviderError) as info:
        build_stack(acme_config("remote::acmee"))
    assert info.value.path == "providers.files[0].provider_type"
    assert "remote::acme" in info.value.known and "inline::localfs" in info.value.known
    assert str(info.value).endswith("known: inline::localfs, remote::acme, remote::passthrough")


class EmptyConfig(BaseModel):
    pass


def _spec(name: str, module: str = "nowhere", **extra: Any) -> ProviderSpec:
    return ProviderSpec(
        api=Api.files, kind=ProviderKind.inline, name=name, config_class=EmptyConfig, module=module, **extra
    )


def test_registering_a_clash_raises_unless_replace() -> None:
    registry = ProviderRegistry()
    registry.register(_spec("x", "first"))
    registry.register(_spec("x", "first"))  # the same spec again is harmless
    with pytest.raises(ProviderRegistrationError, match="already registered by module first"):
        registry.register(_spec("x", "second"))
    registry.register(_spec("x", "second"), replace=True)
    assert registry.get(Api.files, "inline::x").module == "second"
    with pytest.raises(TypeError):
        registry.specs[(Api.files, "inline::y")] = _spec("y")  # type: ignore[index]


def test_aliases_resolve_to_the_provider() -> None:
    registry = ProviderRegistry()
    registry.register(_spec("x", aliases=("remote::x-compat",)))
    assert registry.get(Api.files, "remote::x-compat").provider_type == "inline::x"
    assert registry.known(Api.files) == ["inline::x", "remote::x-compat"]


async def test_a_missing_optional_dependency_says_what_to_install() -> None:
    spec = _spec("heavy", module="llama_batches_module_that_is_not_installed", extra="local")
    with pytest.raises(MissingExtraError) as info:
        await instantiate_provider(spec, EmptyConfig(), ProviderDeps({}))
    assert "pip install 'llama-batches[local]'" in str(info.value)
    assert info.value.provider_type == "inline::heavy"


class HalfFiles:
    async def openai_upload_file(self, file: Any, purpose: Any, filename: Any, expires_after: Any = None) -> Any: ...

    def openai_list_files(self, after: Any = None, limit: int = 1, order: Any = None, purpose: Any = None) -> Any: ...

    async def openai_retrieve_file(self) -> Any: ...


def test_compliance_names_provider_api_and_every_missing_method() -> None:
    with pytest.raises(ProtocolComplianceError) as info:
        check_compliance(HalfFiles(), Files, provider_type="inline::half", api="files")
    problems = info.value.problems
    assert "openai_list_files() must be async" in problems
    assert "openai_retrieve_file() lacks parameter(s) file_id" in problems
    assert "missing method openai_retrieve_file_content()" in problems
    assert "missing method openai_delete_file()" in problems
    message = str(info.value)
    assert "inline::half" in message and "files API" in message


async def test_a_non_compliant_provider_fails_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "half_provider.py").write_text(
        "class Half:\n    pass\n\nasync def get_provider_impl(config, deps):\n    return Half()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ProtocolComplianceError, match="missing method openai_upload_file"):
        await instantiate_provider(_spec("half", module="half_provider"), EmptyConfig(), ProviderDeps({}))
    del sys.modules["half_provider"]


def test_an_entry_point_that_gives_something_else_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bogus_provider.py").write_text("PROVIDER_SPECS = ['not a spec']\n")
    info = tmp_path / "bogus_provider-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bogus-provider\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[llama_batches.providers]\nbogus = bogus_provider:PROVIDER_SPECS\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ProviderRegistrationError, match="must give ProviderSpec objects"):
        default_registry()
    del sys.modules["bogus_provider"]

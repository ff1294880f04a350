"""The registry: entry-point discovery (with a real distribution on sys.path), lazy import, compliance checks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
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
    BrokenProviderError,
    ProviderDeps,
    ProviderKind,
    ProviderRegistry,
    ProviderSpec,
    check_compliance,
    default_registry,
    instantiate_provider,
    spec_problems,
)

from .conformance.files import chunks, read_all
from .plugin_dist import forget_modules, write_distribution

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
    modules = {"acme_files/__init__.py": ACME_PROVIDER, "acme_files/impl.py": ACME_IMPL}
    site = write_distribution(tmp_path / "site", "acme-files", modules, {"acme": "acme_files:PROVIDER_SPECS"})
    monkeypatch.syspath_prepend(str(site))
    yield site
    forget_modules("acme_files")


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


def _spec(name: str, module: str = "json", **extra: Any) -> ProviderSpec:
    return ProviderSpec(
        api=Api.files, kind=ProviderKind.inline, name=name, config_class=EmptyConfig, module=module, **extra
    )


def test_registering_a_clash_raises_unless_replace() -> None:
    registry = ProviderRegistry()
    registry.register(_spec("x", "json"))
    registry.register(_spec("x", "json"))  # the same spec again is harmless
    with pytest.raises(ProviderRegistrationError, match="already registered by module json"):
        registry.register(_spec("x", "email"))
    registry.register(_spec("x", "email"), replace=True)
    assert registry.get(Api.files, "inline::x").module == "email"
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


# broken and invalid plugins -------------------------------------------------------------------------------------

BROKEN_MODULES = {
    "acme_broken/__init__.py": "",
    "acme_broken/needs_gpu.py": "import a_gpu_library_that_is_not_installed\n",
    "acme_broken/number.py": "PROVIDER_SPECS = 42\n",
    "acme_broken/half.py": """
        from pydantic import BaseModel

        from llama_batches.api import Api
        from llama_batches.registry import ProviderKind, ProviderSpec


        class HalfConfig(BaseModel):
            pass


        PROVIDER_SPECS = [
            ProviderSpec(api=Api.files, kind=ProviderKind.remote, name="half-ok", config_class=HalfConfig,
                         module="acme_broken.half"),
            ProviderSpec(api=Api.files, kind=ProviderKind.inline, name="half-done", config_class=dict,
                         module="acme_broken.half"),
        ]
    """,
    "acme_broken/clash.py": """
        from llama_batches.api import Api
        from llama_batches.registry import ProviderKind, ProviderSpec
        from llama_batches_localfs import LocalfsFilesImplConfig

        PROVIDER_SPECS = [
            ProviderSpec(api=Api.files, kind=ProviderKind.inline, name="localfs", config_class=LocalfsFilesImplConfig,
                         module="acme_broken.clash")
        ]
    """,
}
BROKEN_ENTRY_POINTS = {
    "gpu": "acme_broken.needs_gpu:PROVIDER_SPECS",
    "number": "acme_broken.number:PROVIDER_SPECS",
    "half": "acme_broken.half:PROVIDER_SPECS",
    "clash": "acme_broken.clash:PROVIDER_SPECS",
}


@pytest.fixture
def broken_distribution(acme_distribution: Path) -> Iterator[Path]:
    """``acme-broken`` next to the working ``acme-files``: an import error, not specs, an invalid spec, a clash."""
    write_distribution(acme_distribution, "acme-broken", BROKEN_MODULES, BROKEN_ENTRY_POINTS)
    yield acme_distribution
    forget_modules("acme_broken")


def test_broken_plugins_are_skipped_and_reported_and_the_rest_works(
    broken_distribution: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = default_registry()
    assert {"inline::localfs", "remote::passthrough", "remote::acme"} == set(registry.known(Api.files))
    assert registry.get(Api.files, "inline::localfs").module == "llama_batches_localfs"  # the built-in kept its name
    reasons = {plugin.entry_point: plugin for plugin in registry.broken}
    assert set(reasons) == set(BROKEN_ENTRY_POINTS)
    assert {plugin.distribution for plugin in registry.broken} == {"acme-broken"}
    assert "ModuleNotFoundError" in reasons["gpu"].reason
    assert "a_gpu_library_that_is_not_installed" in reasons["gpu"].reason
    assert reasons["number"].reason == "must give a ProviderSpec or a list of them, got int"
    assert "provider 'inline::half-done': config_class must be a pydantic model class" in reasons["half"].reason
    assert "already registered by module llama_batches_localfs from entry point 'localfs = " in reasons["clash"].reason
    assert "of distribution llama-batches" in reasons["clash"].reason
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 4
    assert all("(distribution acme-broken)" in message for message in warnings)
    assert any("'gpu = acme_broken.needs_gpu:PROVIDER_SPECS'" in message for message in warnings)


@pytest.mark.parametrize(
    ("provider_type", "entry_point", "reason"),
    [
        ("remote::gpu", "gpu", "No module named 'a_gpu_library_that_is_not_installed'"),
        ("inline::half-done", "half", "config_class must be a pydantic model class"),
        ("remote::half-ok", "half", "config_class must be a pydantic model class"),  # a plugin is taken whole or not
    ],
)
def test_a_config_using_a_broken_plugin_fails_naming_it(
    broken_distribution: Path, provider_type: str, entry_point: str, reason: str
) -> None:
    with pytest.raises(BrokenProviderError) as info:
        build_stack(acme_config(provider_type))
    error = info.value
    assert isinstance(error, ProviderRegistrationError)
    assert (error.path, error.provider_type) == ("providers.files[0].provider_type", provider_type)
    assert (error.plugin.entry_point, error.plugin.distribution) == (entry_point, "acme-broken")
    message = str(error)
    assert message.startswith(f"providers.files[0].provider_type: provider '{provider_type}' is unavailable")
    assert f"'{entry_point} = {BROKEN_ENTRY_POINTS[entry_point]}' (distribution acme-broken)" in message
    assert reason in message


async def test_working_plugins_still_build_next_to_broken_ones(broken_distribution: Path) -> None:
    async with build_stack(acme_config("remote::acme")) as stack:
        assert vars(stack.files)["greeting"] == "yo"
    with pytest.raises(UnknownProviderError, match="known: inline::localfs, remote::acme, remote::passthrough"):
        build_stack(acme_config("remote::nobody"))


def _cli(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}
    command = [sys.executable, "-m", "llama_batches.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)


def test_llama_batches_providers_lists_broken_plugins_with_their_reason(broken_distribution: Path) -> None:
    done = _cli(broken_distribution, "providers")
    assert done.returncode == 0, done.stderr
    assert "remote::acme" in done.stdout and "inline::localfs" in done.stdout
    broken = [line for line in done.stdout.splitlines() if line.startswith("broken plugin")]
    assert len(broken) == 4
    gpu = next(line for line in broken if "'gpu = " in line)
    assert gpu == (
        "broken plugin 'gpu = acme_broken.needs_gpu:PROVIDER_SPECS' (distribution acme-broken), skipped: cannot be "
        "loaded: ModuleNotFoundError: No module named 'a_gpu_library_that_is_not_installed'"
    )
    assert "skipping provider plugin 'gpu = acme_broken.needs_gpu:PROVIDER_SPECS'" in done.stderr


def test_a_command_on_a_config_using_a_broken_plugin_exits_with_the_reason(broken_distribution: Path) -> None:
    config = broken_distribution.parent / "run.yaml"
    config.write_text(json.dumps(acme_config("remote::gpu")))  # JSON is YAML
    done = _cli(broken_distribution, "models", "--config", str(config))
    assert done.returncode == 2
    assert "providers.files[0].provider_type: provider 'remote::gpu' is unavailable" in done.stderr
    assert "(distribution acme-broken)" in done.stderr and "a_gpu_library_that_is_not_installed" in done.stderr


# specs are validated when registered ---------------------------------------------------------------------------


class NotAModel:
    pass


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"api": "files"}, "api must be an Api, got 'files'"),
        ({"kind": "inline"}, "provider_type 'inline::x' is not inline::<name> or remote::<name>"),
        ({"name": "Bad Name"}, "provider_type 'inline::Bad Name' is not inline::<name> or remote::<name>"),
        ({"name": "a::b"}, "provider_type 'inline::a::b' is not"),
        ({"config_class": NotAModel}, "config_class must be a pydantic model class"),
        ({"module": "not a module"}, "module must be a dotted module path, got 'not a module'"),
        ({"module": "llama_batches_nowhere.impl"}, "no package 'llama_batches_nowhere' is installed"),
        ({"api_dependencies": (Api.files,)}, "api_dependencies lists the provider's own API files"),
        ({"api_dependencies": ("inference",)}, "api_dependencies must be a tuple of Api"),
        ({"api_dependencies": [Api.inference]}, "api_dependencies must be a tuple of Api"),
        (
            {"api_dependencies": (Api.inference,), "optional_api_dependencies": (Api.inference,)},
            "an API is both in api_dependencies and optional_api_dependencies",
        ),
        ({"aliases": ("x-compat",)}, "alias 'x-compat' is not another inline::<name> or remote::<name>"),
        ({"aliases": ("inline::x",)}, "alias 'inline::x' is not another"),
    ],
)
def test_an_invalid_spec_is_refused_naming_the_problem(fields: dict[str, Any], problem: str) -> None:
    registry = ProviderRegistry()
    with pytest.raises(ProviderRegistrationError, match=r"^provider '") as info:
        registry.register(dataclasses.replace(_spec("x"), **fields))
    assert problem in str(info.value)
    assert registry.specs == {}
    assert spec_problems(_spec("x")) == []


def test_every_problem_of_a_spec_is_reported_at_once() -> None:
    spec = ProviderSpec(api=Api.files, kind=ProviderKind.inline, name="x", config_class=dict, module="no way")  # type: ignore[arg-type]
    assert len(spec_problems(spec)) == 2


def test_aliases_cannot_take_a_provider_or_another_alias() -> None:
    registry = ProviderRegistry()
    registry.register(_spec("x", aliases=("inline::x-compat",)))
    with pytest.raises(ProviderRegistrationError, match="alias 'inline::x' is already taken by 'inline::x'"):
        registry.register(_spec("y", aliases=("inline::x",)))
    with pytest.raises(ProviderRegistrationError, match="alias 'inline::x-compat' is already taken by 'inline::x'"):
        registry.register(_spec("y", aliases=("inline::x-compat",)))
    with pytest.raises(ProviderRegistrationError, match="'inline::x-compat' is already an alias of 'inline::x'"):
        registry.register(_spec("x-compat"))
    registry.register(_spec("x", "email", aliases=("inline::x-new",)), replace=True)
    assert registry.known(Api.files) == ["inline::x", "inline::x-new"]  # the replaced spec's aliases went with it


def test_the_built_in_providers_are_valid_and_nothing_is_broken() -> None:
    registry = default_registry()
    assert registry.broken == ()
    assert all(spec_problems(spec) == [] for spec in registry.specs.values())

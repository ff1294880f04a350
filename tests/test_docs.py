"""The provider pages under docs/providers are what docs/gen_provider_docs.py renders from the providers."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from llama_batches.config import substitute_env
from llama_batches.registry import ProviderSpec

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docs" / "gen_provider_docs.py"
REGENERATE = "run `python docs/gen_provider_docs.py`"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_provider_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_script()
BUILTINS: list[ProviderSpec] = gen.builtin_specs()


def test_every_committed_page_is_up_to_date() -> None:
    pages: dict[Path, str] = gen.render_pages(ROOT)
    for path, text in pages.items():
        name = path.relative_to(ROOT)
        assert path.exists(), f"{name} is missing: {REGENERATE}"
        assert path.read_text(encoding="utf-8") == text, f"{name} is out of date: {REGENERATE}"
    stale = [str(p.relative_to(ROOT)) for p in gen.stale_pages(ROOT, pages)]
    assert not stale, f"generated pages of no provider {stale}: {REGENERATE}"


def test_every_builtin_provider_has_a_page() -> None:
    types = {spec.provider_type for spec in BUILTINS}
    assert {"inline::localfs", "remote::openai", "remote::vllm", "remote::ollama", "inline::llama-cpp"} <= types
    for spec in BUILTINS:
        page = ROOT / gen.page_path(spec)
        assert page.exists(), f"{spec.provider_type} has no page {gen.page_path(spec)}: {REGENERATE}"
        assert page.read_text(encoding="utf-8").splitlines()[1] == f"# {spec.provider_type}"
        index = (page.parent / "index.md").read_text(encoding="utf-8")
        assert f"[{spec.provider_type}]({page.name})" in index


def test_page_paths_follow_llama_stack_naming() -> None:
    paths = {spec.provider_type: gen.page_path(spec).as_posix() for spec in BUILTINS}
    assert paths["inline::localfs"] == "docs/providers/files/inline_localfs.md"
    assert paths["remote::openai"] == "docs/providers/inference/remote_openai.md"
    assert paths["inline::llama-cpp"] == "docs/providers/inference/inline_llama_cpp.md"


@pytest.mark.parametrize("spec", BUILTINS, ids=lambda s: s.provider_type)
def test_sample_configuration_is_a_valid_config(spec: ProviderSpec) -> None:
    config = substitute_env(gen.sample_config(spec), env={})
    spec.config_class.model_validate(config)


def test_page_shows_aliases_types_defaults_and_extra() -> None:
    by_type = {spec.provider_type: spec for spec in BUILTINS}
    vllm = gen.render_page(by_type["remote::vllm"])
    assert "| `api_key` (alias: `api_token`, `auth_credential`) | `SecretStr \\| None` | No |" in vllm
    assert "| `allowed_models` | `list[str] \\| None` | No |" in vllm
    assert "| `base_url` | `str` | Yes |" in vllm
    assert "api_token: ${env.VLLM_API_TOKEN:=fake}" in vllm
    localfs = gen.render_page(by_type["inline::localfs"])
    assert "| `metadata_store` | `SqlStoreReference` | Yes |" in localfs
    assert "- `SqlStoreReference`:" in localfs
    assert "| `ttl_secs` | `int` | No | `31536000` |" in localfs
    assert "pip install 'llama-batches[local]'" in gen.render_page(by_type["inline::llama-cpp"])
    assert "pip install" not in localfs


def test_check_and_write_keep_hand_written_text_and_drop_stale_pages(tmp_path: Path) -> None:
    index = tmp_path / "docs" / "providers" / "files" / "index.md"
    index.parent.mkdir(parents=True)
    index.write_text("# Files\n\nHand-written.\n\n<!-- providers:start -->\nold\n<!-- providers:end -->\n\nAfter.\n")
    stale = index.parent / "inline_gone.md"
    stale.write_text(gen.GENERATED_MARK + "\n# inline::gone\n")
    kept = index.parent / "guide.md"
    kept.write_text("# A hand-written guide\n")
    pages = gen.render_pages(tmp_path, BUILTINS)
    assert set(gen.check(tmp_path, pages)) == {*pages, stale}
    gen.write(tmp_path, pages)
    assert gen.check(tmp_path, pages) == []
    assert not stale.exists() and kept.exists()
    text = index.read_text()
    assert text.startswith("# Files\n\nHand-written.\n\n<!-- providers:start -->\n| Provider |")
    assert text.endswith("<!-- providers:end -->\n\nAfter.\n") and "\nold\n" not in text
    assert gen.render_pages(tmp_path, BUILTINS) == pages  # deterministic and idempotent
    (tmp_path / "docs" / "providers" / "inference" / "remote_vllm.md").write_text("edited\n")
    assert gen.main(["--check", "--root", str(tmp_path)]) == 1

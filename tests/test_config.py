"""Run config loading: llama-stack's format, ${env...} substitution, errors that name their path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llama_batches.config import load_config, substitute_env
from llama_batches.errors import ConfigError
from llama_batches.storage.config import SqliteBackendConfig

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${env.X}", {"X": "set"}, "set"),
        ("${env.X:=fallback}", {}, "fallback"),
        ("${env.X:=fallback}", {"X": ""}, "fallback"),
        ("${env.X:=fallback}", {"X": "given"}, "given"),
        ("${env.X:=}", {}, None),
        ("${env.X:+on}", {"X": "1"}, "on"),
        ("${env.X:+on}", {}, None),
        ("${env.X:=8321}", {}, 8321),
        ("${env.X:=0.5}", {}, 0.5),
        ("${env.X:=true}", {}, True),
        ("${env.X:=False}", {}, False),
        ("http://${env.HOST:=localhost}:${env.PORT:=80}/v1", {"PORT": "8000"}, "http://localhost:8000/v1"),
        ("plain text", {}, "plain text"),
        ("7", {}, "7"),  # only substituted values are converted
    ],
)
def test_env_substitution_follows_llama_stack(text: str, env: dict[str, str], expected: Any) -> None:
    assert substitute_env({"v": text}, env) == {"v": expected}


def test_a_home_path_default_is_expanded() -> None:
    assert substitute_env("${env.D:=~/.llama}", {}) == str(Path("~/.llama").expanduser())


def test_a_required_variable_that_is_missing_names_the_path() -> None:
    raw = {"providers": {"inference": [{"provider_id": "x", "provider_type": "t", "config": {"k": "${env.NOPE}"}}]}}
    with pytest.raises(ConfigError) as info:
        substitute_env(raw, {})
    assert info.value.path == "providers.inference[0].config.k"
    assert "NOPE is not set" in str(info.value)


def test_a_provider_whose_id_substitutes_to_empty_is_dropped_unexpanded() -> None:
    raw = {
        "providers": {
            "inference": [
                {"provider_id": "${env.VLLM_URL:+vllm}", "provider_type": "remote::vllm", "config": {"u": "${env.R}"}},
                {"provider_id": "kept", "provider_type": "remote::openai", "config": {}},
            ]
        }
    }
    providers = substitute_env(raw, {})["providers"]["inference"]
    assert [p["provider_id"] for p in providers] == ["kept"]
    enabled = substitute_env(raw, {"VLLM_URL": "http://h/v1", "R": "r"})["providers"]["inference"]
    assert [p["provider_id"] for p in enabled] == ["vllm", "kept"]


def test_an_unmodified_llama_stack_starter_config_loads(tmp_path: Path) -> None:
    config = load_config(DATA / "llama-stack-starter.yaml", {"SQLITE_STORE_DIR": str(tmp_path)})
    assert config.version == 2
    assert {"batches", "files", "inference", "safety", "vector_io"} <= set(config.apis)
    assert [p.provider_type for p in config.providers["files"]] == ["inline::localfs"]
    inference_ids = [p.provider_id for p in config.providers["inference"]]
    assert "ollama" not in inference_ids and "openai" in inference_ids  # ${env.OLLAMA_URL:+ollama} is off
    backend = config.storage.backends["sql_default"]
    assert isinstance(backend, SqliteBackendConfig)
    assert backend.db_path == f"{tmp_path}/sql_store.db"
    assert config.server.port == 8321


def test_a_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("providers: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path) and "not valid YAML" in str(info.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "absent.yaml")


def test_a_config_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config([])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "path", "problem"),
    [
        (
            {"providers": {"files": [{"provider_type": "inline::localfs"}]}},
            "providers.files[0].provider_id",
            "required",
        ),
        ({"providers": {"files": "localfs"}}, "providers.files", "valid list"),
        ({"server": {"port": "eighty"}}, "server.port", "valid integer"),
        ({"storage": {"backends": {"db": {"type": "sql_sqlite"}}}}, "storage.backends.db.db_path", "required"),
        ({"registered_resources": {"models": [{"provider_id": "x"}]}}, "registered_resources.models[0].model_id", ""),
    ],
)
def test_validation_errors_name_the_config_path(raw: dict[str, Any], path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    assert info.value.path == path
    assert problem.lower() in info.value.problem.lower()


def test_unknown_top_level_keys_and_backend_types_are_accepted() -> None:
    config = load_config(
        {"vector_stores": {"x": 1}, "storage": {"backends": {"kv": {"type": "kv_redis", "host": "localhost"}}}}
    )
    assert config.storage.backends["kv"].type == "kv_redis"


DISABLED_FIRST = """\
version: 2
apis: [inference]
providers:
  inference:
  - provider_id: ${env.VLLM_URL:+vllm}
    provider_type: remote::vllm
    config:
      base_url: ${env.VLLM_URL}
  - provider_id: __disabled__
    provider_type: remote::ollama
  - provider_id: ""
    provider_type: remote::openai
  - provider_id: openai
    provider_type: remote::openai
    config:
      base_url: http://127.0.0.1:9/v1
registered_resources:
  models:
  - model_id: ${env.VLLM_MODEL:=}
    provider_id: openai
  - model_id: kept
    provider_id: openai
"""


def test_disabled_entries_are_dropped_but_count_in_the_file_locations(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(DISABLED_FIRST)
    config = load_config(path, {})
    assert [p.provider_id for p in config.providers["inference"]] == ["openai"]
    assert config.location("providers.inference", 0) == "providers.inference[3]"
    assert config.file_index("providers.inference", 0) == 3
    assert [m.model_id for m in config.registered_resources.models] == ["kept"]
    assert config.location("registered_resources.models", 0) == "registered_resources.models[1]"
    assert config.location("providers.files", 0) == "providers.files[0]"  # a list nothing was dropped from

    enabled = load_config(path, {"VLLM_URL": "http://vllm/v1"})
    assert [p.provider_id for p in enabled.providers["inference"]] == ["vllm", "openai"]
    assert enabled.location("providers.inference", 1) == "providers.inference[3]"


def test_a_validation_error_after_disabled_entries_names_the_entry_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(DISABLED_FIRST.replace("  - model_id: kept\n", "  - model_type: llm\n"))
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.path == "registered_resources.models[1].model_id"


def test_a_config_built_in_python_counts_its_own_entries() -> None:
    config = load_config({"providers": {"files": [{"provider_id": "f", "provider_type": "inline::localfs"}]}})
    assert config.location("providers.files", 0) == "providers.files[0]"


def test_the_newer_model_alias_form_loads_as_written() -> None:
    text = "registered_resources:\n  models:\n  - {model_id: claude, provider_id: all, provider_model_id: auto}\n"
    model = load_config(yaml.safe_load(text)).registered_resources.models[0]
    assert (model.model_id, model.provider_id, model.provider_model_id) == ("claude", "all", "auto")

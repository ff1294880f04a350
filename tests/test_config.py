"""Run config loading: llama-stack's format, ${env...} substitution, errors that name their path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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

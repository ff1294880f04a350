"""The serve/worker split is a capability providers declare (``WORKER_SWITCH``), not a provider type name."""

from __future__ import annotations

from typing import Any

from llama_batches.config import load_config
from llama_batches.registry import default_registry
from llama_batches.workers import with_execution, works_in_background


def _config(provider_type: str) -> dict[str, Any]:
    return {
        "version": 2,
        "apis": ["batches", "files"],
        "providers": {
            "batches": [{"provider_id": "b", "provider_type": provider_type, "config": {"kvstore": {"backend": "s"}}}],
            "files": [{"provider_id": "f", "provider_type": "inline::localfs", "config": {"storage_dir": "/tmp/x"}}],
        },
        "storage": {"backends": {"s": {"type": "sql_memory"}}},
    }


def test_the_switch_is_set_on_every_provider_that_declares_it_under_any_of_its_names() -> None:
    for name in ("inline::reference", "inline::llama-batches"):  # the engine and its name inside llama-stack
        for execute in (True, False):
            config = with_execution(load_config(_config(name)), execute)
            assert config.providers["batches"][0].config["execute"] is execute
            assert "execute" not in config.providers["files"][0].config  # localfs declares no background work


def test_none_leaves_the_config_as_written_and_unknown_types_alone() -> None:
    assert (
        "execute" not in with_execution(load_config(_config("inline::reference")), None).providers["batches"][0].config
    )
    unknown = with_execution(load_config(_config("inline::meta-reference")), False)
    assert "execute" not in unknown.providers["batches"][0].config


def test_which_registered_providers_work_in_the_background() -> None:
    working = {t for (_, t), spec in default_registry().specs.items() if works_in_background(spec.config_class)}
    assert working == {"inline::reference"}

"""Every public module's ``__all__`` names things that exist, and the package's top level exports its API."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import llama_batches

MODULES = [
    "llama_batches",
    "llama_batches.api",
    "llama_batches.api.batches",
    "llama_batches.api.common",
    "llama_batches.api.files",
    "llama_batches.api.inference",
    "llama_batches.api.models",
    "llama_batches.config",
    "llama_batches.errors",
    "llama_batches.idempotency",
    "llama_batches.local_run",
    "llama_batches.server",
    "llama_batches.principal",
    "llama_batches.registry",
    "llama_batches.routing",
    "llama_batches.stack",
    "llama_batches.storage",
    "llama_batches.cli",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(set(exported)) == len(exported)
    missing = [item for item in exported if not hasattr(module, item)]
    assert missing == []


def test_the_core_imports_no_provider() -> None:
    code = (
        "import sys, importlib\n"
        f"for name in {MODULES!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('llama_batches_')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_version_is_exposed() -> None:
    assert llama_batches.__version__

"""A Python 3.12 virtualenv with llama-stack 0.7.3, llama-stack-client and this checkout, for tests that run the
real llama-stack server or its client CLI.

The venv is built once and cached under ``~/.cache/llama-batches-tests`` (``LLAMA_BATCHES_TEST_CACHE`` moves it);
this checkout is installed into it in editable mode, again whenever the checkout's path changes (a CI clone). A
fresh build takes about four minutes on two cores; the test command builds it itself. Without a Python 3.12 on the
machine the tests that need it are skipped with a reason that says so loudly.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["LLAMA_STACK_VERSION", "find_python312", "llama_stack_venv"]

LLAMA_STACK_VERSION = "0.7.3"
REPO = Path(__file__).resolve().parent.parent
_EXTRAS = "llama-stack,postgres"  # the adapter, and asyncpg for its tables on a kv_postgres / sql_postgres backend
_PACKAGES = (
    f"llama-stack=={LLAMA_STACK_VERSION}",
    "llama-stack-client>=0.7,<0.8",
    "openai>=2.5",
    "mcp>=1.23,<2",  # llama-stack 0.7.3 imports McpError, which mcp 2 no longer has
)


def find_python312() -> Path | None:
    """A Python 3.12 interpreter that runs: pyenv's, else ``python3.12`` on PATH (a pyenv shim may not run)."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = sorted(glob.glob(str(root / "versions" / "3.12*" / "bin" / "python3.12")), reverse=True)
    on_path = shutil.which("python3.12")
    for candidate in [*candidates, *([on_path] if on_path else [])]:
        probe = subprocess.run([candidate, "-c", "pass"], capture_output=True, timeout=60, check=False)
        if probe.returncode == 0:
            return Path(candidate)
    return None


def _cache_dir() -> Path:
    base = os.environ.get("LLAMA_BATCHES_TEST_CACHE") or str(Path.home() / ".cache" / "llama-batches-tests")
    return Path(base)


def _run(*args: str | Path) -> None:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=1500, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({done.returncode}):\n{done.stderr[-4000:]}")


def _ours_stamp() -> str:
    """Where this checkout is and what its pyproject says: the editable install is redone when either changes."""
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    return f"{REPO}[{_EXTRAS}] {digest}"


def llama_stack_venv() -> Path:
    """The ``bin`` directory of the cached venv (built now if missing). Raises ``LookupError`` without 3.12."""
    python312 = find_python312()
    if python312 is None:
        raise LookupError("no Python 3.12 on this machine (llama-stack 0.7.3 needs it); install it, e.g. with pyenv")
    venv = _cache_dir() / f"llama-stack-{LLAMA_STACK_VERSION}-py312"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        python = venv / "bin" / "python"
        marker = venv / ".complete"
        if not marker.exists() or marker.read_text() != " ".join(_PACKAGES):
            shutil.rmtree(venv, ignore_errors=True)
            _run(python312, "-m", "venv", venv)
            _run(python, "-m", "pip", "install", "-q", *_PACKAGES)
            marker.write_text(" ".join(_PACKAGES))
        stamp = venv / ".ours"
        if not stamp.exists() or stamp.read_text() != _ours_stamp():
            _run(python, "-m", "pip", "install", "-q", "-e", f"{REPO}[{_EXTRAS}]")
            stamp.write_text(_ours_stamp())
    return venv / "bin"


if __name__ == "__main__":  # build or refresh the venv by hand: python -m tests.llama_stack_venv
    print(llama_stack_venv(), file=sys.stdout)

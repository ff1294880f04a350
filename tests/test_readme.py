"""The README's openai-SDK snippet runs as written against `llama-batches serve` on the embedded default."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from .server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


def readme_snippet() -> str:
    """The Python block of the section 'Serve it to the openai SDK'."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Serve it to the openai SDK", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "the README lost its openai-SDK snippet"
    return match.group(1)


@pytest.mark.model
async def test_the_readme_sdk_snippet_runs_against_the_default_server(tmp_path: Path) -> None:
    default = (ROOT / "llama_batches" / "default-run.yaml").read_text()
    env = {**os.environ, "LLAMA_BATCHES_HOME": str(tmp_path / "home")}
    async with ServerProcess(yaml.safe_load(default), tmp_path, env=env) as server:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            readme_snippet(),
            cwd=ROOT,
            env={**os.environ, "LLAMA_BATCHES_BASE_URL": server.base_url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].startswith("completed") and "completed=12" in lines[0]
    assert "Paris" in out.decode()

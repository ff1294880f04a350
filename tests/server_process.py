"""``llama-batches serve`` as a real subprocess on a free loopback port, for integration tests.

```python
async with ServerProcess(config_dict, tmp_path) as server:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused")
```
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import yaml

__all__ = ["ServerProcess", "free_port"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    """Runs ``python -m llama_batches.cli serve`` with ``config`` (written to ``directory/run.yaml``)."""

    def __init__(self, config: dict[str, Any], directory: Path, *, env: dict[str, str] | None = None) -> None:
        self.config_path = directory / "run.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = directory / "server.log"
        self.port = free_port()
        self.env = env
        self.process: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until /v1/health answers."""
        log = self.log_path.open("ab")
        command = [sys.executable, "-m", "llama_batches.cli", "serve", "--config", str(self.config_path)]
        self.process = await asyncio.create_subprocess_exec(
            *command, "--port", str(self.port), "--log-level", "warning", stdout=log, stderr=log, env=self.env
        )
        log.close()
        async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"the server exited: {self.log_path.read_text()}")
                try:
                    async with session.get(f"{self.base_url}/health") as answer:
                        if answer.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)

    async def stop(self) -> int:
        """Stop the server gracefully (SIGTERM); its exit code."""
        if self.process is None or self.process.returncode is not None:
            return self.process.returncode if self.process and self.process.returncode is not None else 0
        self.process.terminate()
        try:
            return await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            self.process.kill()
            return await self.process.wait()

    async def __aenter__(self) -> ServerProcess:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class WorkerProcess:
    """Runs ``python -m llama_batches.cli worker`` on a config file; its log is kept in ``log_path``."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, timeout: float = 30.0) -> None:
        """Start the worker and wait until it says it is running."""
        log = self.log_path.open("ab")
        command = [sys.executable, "-m", "llama_batches.cli", "worker", "--config", str(self.config_path)]
        self.process = await asyncio.create_subprocess_exec(*command, stdout=log, stderr=log)
        log.close()
        async with asyncio.timeout(timeout):
            while "worker running" not in self.log_path.read_text(errors="replace"):
                if self.process.returncode is not None:
                    raise RuntimeError(f"the worker exited: {self.log_path.read_text()}")
                await asyncio.sleep(0.05)

    def batches_run(self) -> set[str]:
        """The batch ids this worker started running, from its log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return {line.split(" runs batch ", 1)[1].split()[0] for line in text.splitlines() if " runs batch " in line}

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

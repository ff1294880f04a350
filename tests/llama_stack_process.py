"""A real ``llama stack run <config>`` (llama-stack 0.7.3, from :mod:`tests.llama_stack_venv`) as a process."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from types import TracebackType

import aiohttp

from .server_process import free_port

__all__ = ["LlamaStackProcess"]


class LlamaStackProcess:
    """``llama stack run`` on ``config_path`` with ``env`` added, listening on a free port; log in ``log_path``."""

    def __init__(self, bin_dir: Path, config_path: Path, log_path: Path, env: dict[str, str]) -> None:
        self.bin_dir = bin_dir
        self.config_path = config_path
        self.log_path = log_path
        self.port = free_port()
        self.env = {**os.environ, **env, "LLAMA_STACK_PORT": str(self.port)}
        self.process: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, timeout: float = 120.0) -> None:
        """Start the server and wait until ``/v1/health`` answers 200 (llama-stack takes a few seconds)."""
        log = self.log_path.open("ab")
        command = [str(self.bin_dir / "llama"), "stack", "run", str(self.config_path), "--port", str(self.port)]
        self.process = await asyncio.create_subprocess_exec(
            *command, stdout=log, stderr=log, env=self.env, start_new_session=True
        )
        log.close()
        async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"llama stack run exited: {self.log_path.read_text(errors='replace')[-6000:]}")
                try:
                    async with session.get(f"{self.base_url}/health") as answer:
                        if answer.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        """``kill -9`` the server (its whole process group): nothing gets to clean up."""
        if self.process is not None and self.process.returncode is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            await asyncio.wait_for(self.process.wait(), 30)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers past 15 s."""
        if self.process is None or self.process.returncode is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            await self.kill()

    async def __aenter__(self) -> LlamaStackProcess:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

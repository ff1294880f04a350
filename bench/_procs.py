"""Child processes the benchmarks start: ``llama-batches worker``, ``llama stack run`` and the cached llama-stack
venv. Nothing here is imported from ``tests/``: what bench needs from the test tree (the fake backend, the
llama-stack venv builder) is run as a process, ``python -m tests.<module>`` with the repository root as the working
directory, which is why the benchmarks run from a checkout (see bench/README.md).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import TracebackType

import aiohttp

__all__ = ["ROOT", "LlamaStackServer", "Worker", "free_port", "llama_stack_bin"]

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def llama_stack_bin() -> tuple[Path, str]:
    """The ``bin`` directory of the cached Python 3.12 venv with llama-stack (``python -m tests.llama_stack_venv``,
    which builds it on first use, about four minutes) and the llama-stack version installed in it."""
    built = subprocess.run(
        [sys.executable, "-m", "tests.llama_stack_venv"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if built.returncode != 0:
        raise RuntimeError(f"python -m tests.llama_stack_venv failed: {built.stderr[-3000:]}")
    bin_dir = Path(built.stdout.strip().splitlines()[-1])
    probe = "import importlib.metadata as m; print(m.version('llama-stack'))"
    version = subprocess.run([bin_dir / "python", "-c", probe], capture_output=True, text=True, check=True)
    return bin_dir, version.stdout.strip()


class _Child:
    """A child process in its own process group, its output appended to ``log_path``."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def _spawn(self, command: list[str], env: dict[str, str] | None = None) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *command, stdout=log, stderr=log, env=env, cwd=ROOT, start_new_session=True
            )

    def _check_running(self, what: str) -> None:
        if not self.alive:
            raise RuntimeError(f"{what} exited: {self.log()[-6000:]}")

    async def kill(self) -> None:
        """``kill -9`` the whole process group: nothing gets to clean up."""
        if self.alive:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            await asyncio.wait_for(self.process.wait(), 30)

    async def stop(self) -> None:
        """SIGTERM to the process group, then SIGKILL if it lingers past 15 s."""
        if not self.alive:
            return
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            await self.kill()


class Worker(_Child):
    """``python -m llama_batches.cli worker --config config_path``."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        super().__init__(log_path)
        self.config_path = config_path

    async def start(self, timeout: float = 30.0) -> None:
        """Start the worker and wait until its log says it is running."""
        await self._spawn([sys.executable, "-m", "llama_batches.cli", "worker", "--config", str(self.config_path)])
        async with asyncio.timeout(timeout):
            while "worker running" not in self.log():
                self._check_running("the worker")
                await asyncio.sleep(0.05)

    def batches_run(self) -> set[str]:
        """The batch ids this worker started running, from its log."""
        return {
            line.split(" runs batch ", 1)[1].split()[0] for line in self.log().splitlines() if " runs batch " in line
        }


class LlamaStackServer(_Child):
    """``llama stack run config_path`` from the venv in ``bin_dir`` with ``env`` added, on a free port."""

    def __init__(self, bin_dir: Path, config_path: Path, log_path: Path, env: dict[str, str]) -> None:
        super().__init__(log_path)
        self.bin_dir = bin_dir
        self.config_path = config_path
        self.port = free_port()
        self.env = {**os.environ, **env, "LLAMA_STACK_PORT": str(self.port)}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, timeout: float = 120.0) -> None:
        """Start the server and wait until ``/v1/health`` answers 200."""
        command = [str(self.bin_dir / "llama"), "stack", "run", str(self.config_path), "--port", str(self.port)]
        await self._spawn(command, self.env)
        async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
            while True:
                self._check_running("llama stack run")
                try:
                    async with session.get(f"{self.base_url}/health") as answer:
                        if answer.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    async def __aenter__(self) -> LlamaStackServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

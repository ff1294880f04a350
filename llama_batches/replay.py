"""How a batches provider tells its caller that a create was an idempotent replay (the server answers it with
``Idempotent-Replayed: true``). A context variable, so the API signatures stay llama-stack's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["mark_replayed", "watch_replay"]

_replayed: ContextVar[bool] = ContextVar("llama_batches_replayed", default=False)


def mark_replayed() -> None:
    """Called by a provider whose create_batch returned an existing batch for a known idempotency key."""
    _replayed.set(True)


@contextmanager
def watch_replay() -> Iterator[Callable[[], bool]]:
    """Inside the block, the yielded function tells whether a create awaited in this task was a replay."""
    token = _replayed.set(False)
    try:
        yield _replayed.get
    finally:
        _replayed.reset(token)

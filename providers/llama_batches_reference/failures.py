"""How a run of a batch can fail, and how a failure is told in a batch's ``errors``.

- :class:`PermanentFailure`: a condition no retry can fix (the input file is gone); the batch fails at once.
- :class:`InvariantViolation`: the engine's own bookkeeping does not add up; the run stops and is retried.
- any other exception: the run stops and is retried with backoff, up to ``max_batch_attempts`` runs in all.
"""

from __future__ import annotations

from llama_batches.errors import quoted

__all__ = ["InvariantViolation", "PermanentFailure", "describe"]

REASON_CHARS = 200


class PermanentFailure(Exception):
    """The batch cannot finish, whatever is retried; ``code``, ``message`` and ``param`` go into its errors."""

    def __init__(self, code: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


class InvariantViolation(Exception):
    """What the store holds of a batch contradicts what the engine expects (a bug, or a store that lost writes)."""


def describe(exc: BaseException) -> str:
    """``exc`` in a few words for a batch's error message: its type and the start of its message, no traceback."""
    text = str(exc)
    return f"{type(exc).__name__}: {quoted(text, REASON_CHARS)}" if text else type(exc).__name__

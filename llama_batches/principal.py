"""The ambient principal: who the current call acts for.

The server sets it per request; library users set it with ``async with stack.as_principal("alice")`` (or
:func:`acting_as`). Providers read it with :func:`current_principal` to scope every row they store.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["ANONYMOUS", "acting_as", "current_principal"]

ANONYMOUS = "anonymous"

_principal: ContextVar[str] = ContextVar("llama_batches_principal", default=ANONYMOUS)


def current_principal() -> str:
    """The principal the current task acts for (``anonymous`` unless set)."""
    return _principal.get()


@contextmanager
def acting_as(principal: str) -> Iterator[str]:
    """Act for ``principal`` inside the block (and in tasks created inside it)."""
    if not principal or any(ord(c) < 0x20 or ord(c) == 0x7F for c in principal):
        raise ValueError("a principal must be a non-empty string without control characters")
    token = _principal.set(principal)
    try:
        yield principal
    finally:
        _principal.reset(token)

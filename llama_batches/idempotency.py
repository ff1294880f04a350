"""Shared pieces of idempotent creation: the key's alias, and how a batches provider tells its caller that a create
was a replay (the server answers it with ``Idempotent-Replayed: true``) through a context variable, so the API
signatures stay llama-stack's."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import orjson

from .errors import InvalidRequestError

__all__ = ["MAX_KEY_LENGTH", "check_key", "fingerprint", "mark_replayed", "one_key", "scoped_key", "watch_replay"]

MAX_KEY_LENGTH = 255
"""Stripe's bound on an idempotency key, in characters."""

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

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


def one_key(idempotency_key: str | None, idem_tok: str | None) -> str | None:
    """The key, given as ``idempotency_key`` or as ``idem_tok`` (the seed's early name); two that differ are a 400."""
    if idempotency_key is not None and idem_tok is not None and idempotency_key != idem_tok:
        raise InvalidRequestError("idempotency_key and idem_tok differ.", code="invalid_value", param="idem_tok")
    return idempotency_key if idempotency_key is not None else idem_tok


def check_key(key: str, param: str = "idempotency_key") -> str:
    """``key`` when it is a key every store can hold: 1 to 255 characters, no NUL, no lone surrogate (400 naming
    ``param`` otherwise). The key is opaque: no trimming, case folding or Unicode normalisation, so two keys are the
    same key exactly when their strings are equal."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidRequestError(
            f"An idempotency key must have 1 to {MAX_KEY_LENGTH} characters.", code="invalid_value", param=param
        )
    if _UNSTORABLE.search(key) is not None:
        raise InvalidRequestError(
            "An idempotency key cannot hold NUL characters or lone surrogates.", code="invalid_value", param=param
        )
    return key


def fingerprint(params: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of create parameters: key order does not matter anywhere, None != {}."""
    return hashlib.sha256(orjson.dumps(dict(params), option=orjson.OPT_SORT_KEYS)).hexdigest()


def scoped_key(owner: str, key: str) -> str:
    """A digest of (owner, key): the same key used by two principals never names the same thing."""
    return hashlib.sha256(f"{owner}\x00{key}".encode()).hexdigest()

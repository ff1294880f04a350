"""Idempotent creation, one service for every batches provider and the server.

- **Key**: opaque, 1 to 255 characters a store can hold (:func:`check_key`); ``idem_tok`` is its early alias
  (:func:`one_key`). The server decodes its transports (header, body) before this sees it.
- **Scope**: (principal, key), as a digest (:func:`scoped_key`): two principals' equal keys never meet.
- **Fingerprint**: sha256 of the canonical JSON of the create parameters (:func:`fingerprint`): key order does not
  matter, ``None`` and ``{}`` differ.
- **Claim**: the provider's store makes the claim atomic (an insert that only one create wins); a later create with
  the key checks its fingerprint against the stored one (:meth:`IdempotentCreate.check`): the same parameters are a
  replay, others the 409 every provider words alike.
- **Replay marker**: a provider that returns an existing batch says so with :func:`mark_replayed`; the server reads
  it (:func:`watch_replay`) and answers ``Idempotent-Replayed: true``, through a context variable so that the API
  signatures stay llama-stack's.
- **Retention**: a claim lives as long as what it made (the batch row of ``inline::reference``, the ledger entry of
  ``remote::passthrough``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import ConflictError, InvalidRequestError, quoted

__all__ = [
    "MAX_KEY_LENGTH",
    "IdempotentCreate",
    "check_key",
    "fingerprint",
    "mark_replayed",
    "one_key",
    "scoped_key",
    "watch_replay",
]

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


@dataclass(frozen=True, slots=True)
class IdempotentCreate:
    """One create with an idempotency key: whose, which key, and the fingerprint of its parameters."""

    owner: str
    key: str
    fingerprint: str

    @classmethod
    def of(cls, owner: str, key: str, params: Mapping[str, Any]) -> IdempotentCreate:
        """The create of ``params`` by ``owner`` under ``key`` (checked: a 400 naming ``idempotency_key``)."""
        return cls(owner, check_key(key), fingerprint(params))

    @property
    def scope(self) -> str:
        """The digest of (owner, key) that names the claim in a store."""
        return scoped_key(self.owner, self.key)

    def check(self, stored_fingerprint: str | None, made: str | None = None) -> None:
        """Nothing when the stored claim of this key was made with these parameters (a replay); else the 409,
        naming the key and, when known, the batch it made."""
        if stored_fingerprint == self.fingerprint:
            return
        used = f"was already used to create batch {made}" if made else "was already used"
        raise ConflictError(
            f"Idempotency key {quoted(self.key)} {used} with different parameters. "
            "Use another key to create a different batch.",
            code="idempotency_key_reused",
            param="idempotency_key",
        )

"""Pieces of the fake backend's answers: OpenAI-shaped error answers, request identities, crude token counts and
deterministic embedding vectors (split from :mod:`tests.fake_backend` to keep it small)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

__all__ = ["Reject", "identity", "usage", "vector", "words"]


class Reject(Exception):
    """An OpenAI-shaped error answer."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        self.headers = headers or {}


def identity(value: Any) -> str:
    """A request's identity (``FakeBackend.seen``'s key): the value itself when a string, its JSON otherwise."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def words(value: Any) -> int:
    """A crude token count: the words of a string, or of every string inside a list or a message."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(words(item) for item in value)
    if isinstance(value, dict):
        return words(value.get("content")) + words(value.get("text"))
    return 0


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's ``usage`` object."""
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit-free vector in [-1, 1] for ``text``."""
    digest = hashlib.blake2b(text.encode(), digest_size=64).digest()
    raw = (digest * (dimensions // len(digest) + 1))[:dimensions]
    return [round(byte / 127.5 - 1.0, 6) for byte in raw]

"""Types shared by every API: the API names and the OpenAI list envelope."""

from __future__ import annotations

from enum import StrEnum
from typing import Generic, Literal, Self, TypeVar

from pydantic import BaseModel

__all__ = ["Api", "Endpoint", "ListResponse", "Order"]

T = TypeVar("T")


class Api(StrEnum):
    """The APIs llama-batches serves, named as in llama-stack's run config."""

    batches = "batches"
    files = "files"
    inference = "inference"
    models = "models"


class Endpoint(StrEnum):
    """The OpenAI inference endpoints llama-batches serves (and a batch can target)."""

    chat_completions = "/v1/chat/completions"
    completions = "/v1/completions"
    embeddings = "/v1/embeddings"


class Order(StrEnum):
    """Sort order of a list by creation time."""

    asc = "asc"
    desc = "desc"


class ListResponse(BaseModel, Generic[T]):
    """OpenAI's cursor page: ``{"object": "list", "data", "first_id", "last_id", "has_more"}``."""

    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False

    @classmethod
    def of(cls, data: list[T], *, has_more: bool = False) -> Self:
        """A page of ``data`` (items with an ``id``), its first and last ids filled in."""
        ids = [getattr(item, "id", None) for item in (data[:1] + data[-1:])]
        return cls(data=data, first_id=ids[0] if ids else None, last_id=ids[-1] if ids else None, has_more=has_more)

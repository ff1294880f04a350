"""Types shared by every API: the API names and the OpenAI list envelope."""

from __future__ import annotations

from enum import StrEnum
from typing import Generic, Literal, TypeVar

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

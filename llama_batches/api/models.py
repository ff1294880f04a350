"""The Models API: the models a stack can run, and which inference provider runs each."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

from openai.types import Model as OpenAIModel
from pydantic import BaseModel, Field

from .common import ListResponse

__all__ = ["ListModelsResponse", "Model", "ModelType", "Models", "OpenAIModel"]


class ModelType(StrEnum):
    """What a model does."""

    llm = "llm"
    embedding = "embedding"


class Model(BaseModel):
    """A model known to the stack (llama-stack's ``registered_resources.models`` entry)."""

    identifier: str = Field(description="The id clients use in request bodies.")
    provider_id: str = Field(description="The inference provider that runs it.")
    provider_resource_id: str = Field(description="The provider's own id for the model.")
    model_type: ModelType = ModelType.llm
    metadata: dict[str, Any] = Field(default_factory=dict)
    created: int = 0

    def to_openai(self) -> OpenAIModel:
        """The model as OpenAI's ``/v1/models`` lists it."""
        return OpenAIModel(id=self.identifier, created=self.created, object="model", owned_by=self.provider_id)


class ListModelsResponse(ListResponse[OpenAIModel]):
    """OpenAI's model list."""

    object: Literal["list"] = "list"


@runtime_checkable
class Models(Protocol):
    """Look up models."""

    async def list_models(self) -> list[Model]:
        """Every model the stack can run."""
        ...

    async def get_model(self, model_id: str) -> Model:
        """The model clients call ``model_id``.

        :raises NotFoundError: no provider runs that model.
        """
        ...

    async def openai_list_models(self) -> ListModelsResponse:
        """Every model, in OpenAI's ``/v1/models`` shape."""
        ...

"""The Models API: the models a stack can run, and which inference provider runs each."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

from openai.types import Model as OpenAIModel
from pydantic import BaseModel, ConfigDict, Field

from .common import ListResponse

__all__ = ["ListModelsResponse", "Model", "ModelObject", "ModelType", "Models", "OpenAIModel"]


class ModelType(StrEnum):
    """What a model does."""

    llm = "llm"
    embedding = "embedding"


class ModelObject(OpenAIModel):
    """A model as the server answers it: OpenAI's model object (``id``, ``object``, ``created``, ``owned_by``) that is
    also llama-stack's (``identifier``, ``provider_id``, ``provider_resource_id``, ``model_type``, ``metadata``,
    ``type``, and ``custom_metadata`` as llama-stack's ``/v1/models`` list carries them), so that the openai SDK and
    llama-stack-client both read it."""

    model_config = ConfigDict(protected_namespaces=())

    identifier: str = Field(description="The id clients use in request bodies (the same as id).")
    provider_id: str = Field(description="The inference provider that runs it.")
    provider_resource_id: str = Field(description="The provider's own id for the model.")
    model_type: ModelType = Field(description="What the model does.")
    metadata: dict[str, Any] = Field(description="The model's metadata in registered_resources.models.")
    type: Literal["model"] = "model"
    custom_metadata: dict[str, Any] = Field(
        description="llama-stack's form: metadata, then model_type, provider_id and provider_resource_id."
    )


class Model(BaseModel):
    """A model known to the stack (llama-stack's ``registered_resources.models`` entry)."""

    model_config = ConfigDict(protected_namespaces=())

    identifier: str = Field(description="The id clients use in request bodies.")
    provider_id: str = Field(description="The inference provider that runs it.")
    provider_resource_id: str = Field(description="The provider's own id for the model.")
    model_type: ModelType = ModelType.llm
    metadata: dict[str, Any] = Field(default_factory=dict)
    created: int = 0

    def to_openai(self) -> ModelObject:
        """The model as ``/v1/models`` answers it: OpenAI's object with llama-stack's fields (:class:`ModelObject`)."""
        own = {
            "model_type": self.model_type.value,
            "provider_id": self.provider_id,
            "provider_resource_id": self.provider_resource_id,
        }
        return ModelObject(
            id=self.identifier,
            created=self.created,
            object="model",
            owned_by=self.provider_id,
            identifier=self.identifier,
            provider_id=self.provider_id,
            provider_resource_id=self.provider_resource_id,
            model_type=self.model_type,
            metadata=dict(self.metadata),
            custom_metadata={**self.metadata, **own},
        )


class ListModelsResponse(ListResponse[ModelObject]):
    """OpenAI's model list (each model also in llama-stack's shape)."""

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
        """Every model, in OpenAI's ``/v1/models`` shape (with llama-stack's fields, :class:`ModelObject`)."""
        ...

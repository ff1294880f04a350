"""``/v1/models``: the stack's models, each in OpenAI's shape and llama-stack's at once (:class:`ModelObject`), so
that ``openai`` (``client.models.list()``, ``retrieve``) and ``llama-stack-client`` (``models list``, ``models get``)
both read them."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..api.models import ListModelsResponse, ModelObject
from ..stack import Stack

__all__ = ["router"]

router = APIRouter(prefix="/v1/models", tags=["Models"])


def _stack(request: Request) -> Stack:
    stack: Stack = request.app.state.stack
    return stack


@router.get("", response_model=ListModelsResponse, summary="List models")
async def list_models(request: Request) -> ListModelsResponse:
    """Every model of ``registered_resources.models`` and every model an inference provider says it runs."""
    return await _stack(request).models.openai_list_models()


@router.get("/{model_id:path}", response_model=ModelObject, summary="Retrieve a model")
async def retrieve_model(model_id: str, request: Request) -> ModelObject:
    """The model ``model_id`` (which may contain slashes: ``provider_id/model``); a 404 ``model_not_found``
    when no provider runs it."""
    return (await _stack(request).models.get_model(model_id)).to_openai()

"""The API contracts: one ``typing.Protocol`` per API, with the OpenAI wire models they use."""

from __future__ import annotations

from .batches import (
    TERMINAL_BATCH_STATUSES,
    Batch,
    BatchEndpoint,
    BatchError,
    Batches,
    BatchRequestCounts,
    BatchStatus,
    ListBatchesResponse,
    OutputExpiresAfter,
)
from .common import Api, Endpoint, ListResponse, Order
from .files import ExpiresAfter, FileDeleted, FileObject, FilePurpose, Files, ListFilesResponse
from .inference import (
    ChatCompletion,
    Completion,
    CreateEmbeddingResponse,
    Inference,
    InferenceProvider,
    RawResponse,
)
from .models import ListModelsResponse, Model, Models, ModelType

__all__ = [
    "TERMINAL_BATCH_STATUSES",
    "Api",
    "Batch",
    "BatchEndpoint",
    "BatchError",
    "BatchRequestCounts",
    "BatchStatus",
    "Batches",
    "ChatCompletion",
    "Completion",
    "CreateEmbeddingResponse",
    "Endpoint",
    "ExpiresAfter",
    "FileDeleted",
    "FileObject",
    "FilePurpose",
    "Files",
    "Inference",
    "InferenceProvider",
    "ListBatchesResponse",
    "ListFilesResponse",
    "ListModelsResponse",
    "ListResponse",
    "Model",
    "ModelType",
    "Models",
    "Order",
    "OutputExpiresAfter",
    "RawResponse",
]

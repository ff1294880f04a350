"""The Inference API: OpenAI chat completions, completions and embeddings.

Two faces. Library users call the typed methods and get the openai SDK's models back. The batch executor calls
``raw_request``: a request body in bytes goes to the backend and its answer comes back in bytes, without being
parsed into SDK models and serialised again (that round trip costs more than the HTTP call itself).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from .common import Endpoint

__all__ = [
    "ChatCompletion",
    "Completion",
    "CreateEmbeddingResponse",
    "Inference",
    "InferenceProvider",
    "RawResponse",
]


@dataclass(frozen=True, slots=True)
class RawResponse:
    """A backend's answer to a raw request: HTTP status, the headers that matter, body bytes."""

    status_code: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the backend answered 2xx."""
        return 200 <= self.status_code < 300


@runtime_checkable
class Inference(Protocol):
    """Run models."""

    async def openai_chat_completion(
        self, model: str, messages: Sequence[Mapping[str, Any]], **params: Any
    ) -> ChatCompletion:
        """Create a chat completion.

        :param model: a model id known to the stack.
        :param messages: OpenAI chat messages.
        :param params: any other OpenAI chat completion parameter (``max_tokens``, ``temperature``, ...).
        """
        ...

    async def openai_completion(self, model: str, prompt: str | list[str], **params: Any) -> Completion:
        """Create a text completion.

        :param model: a model id known to the stack.
        :param prompt: the prompt.
        :param params: any other OpenAI completion parameter.
        """
        ...

    async def openai_embeddings(self, model: str, input: str | list[str], **params: Any) -> CreateEmbeddingResponse:
        """Create embeddings.

        :param model: an embedding model id known to the stack.
        :param input: one text or a list of texts.
        """
        ...

    async def raw_request(self, endpoint: Endpoint, model: str, body: bytes) -> RawResponse:
        """Send a request body as is and return the backend's answer as is.

        :param endpoint: the OpenAI endpoint.
        :param model: the ``model`` named in ``body`` (providers need not parse the body to learn it).
        :param body: the JSON request body.
        :returns: the answer, whatever its HTTP status.
        :raises ServiceUnavailableError: the backend could not be reached.
        :raises UpstreamTimeoutError: the backend did not answer in time.
        """
        ...


@runtime_checkable
class InferenceProvider(Inference, Protocol):
    """What an inference provider implements: the API plus the list of models it runs."""

    async def list_provider_models(self) -> list[str]:
        """The ids, in the provider's own naming, of the models this provider can run."""
        ...

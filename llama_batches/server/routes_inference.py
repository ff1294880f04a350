"""``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``: OpenAI's inference routes, served by
the stack's inference router on the raw path the batch engine uses (``Inference.raw_request``).

The request body goes to the provider that runs its ``model`` as it was sent (the router renames the model only when
the provider knows it by another name), and a successful answer comes back with the bytes the provider sent. The
server reads only what it must: the body must be a JSON object (else a 400 ``invalid_json`` or ``invalid_type``) with
a string ``model`` (a 400 naming ``model``); a model no provider runs is a 404 ``model_not_found``. ``stream`` must be
absent, ``false`` or ``null``: the raw path carries whole answers, so a streamed request is a 400
``streaming_unsupported`` naming ``stream``.

A provider's answer is untrusted input. A 2xx whose body is not a JSON object is a 502 ``invalid_response``. An error
answer is mapped onto the error tree as the openai SDK's errors are on the typed path: its status, message, code and
param kept (a 422 is a 400, a 429 keeps its ``Retry-After``), except that its 401 or 403 refused the server's own
credentials (a 502), and its 5xx is a 502. A provider that cannot be reached is a 503, one that does not answer in time
a 504. Bodies are capped at ``MAX_INFERENCE_BODY_BYTES`` and read after authentication (:mod:`.limits`).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect

from ..api import Endpoint, RawResponse
from ..errors import APIError, InvalidRequestError, RateLimitedError, UpstreamError, bounded, error_for_status
from ..stack import Stack
from ..upstream import retry_after, upstream_field
from .openapi import error_responses

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["Inference"])

_KEPT_HEADERS = ("x-request-id",)
_WHERE = "The inference server"
_REQUIRED = {
    Endpoint.chat_completions: ("messages", "OpenAI's chat completion request (CreateChatCompletionRequest)."),
    Endpoint.completions: ("prompt", "OpenAI's completion request (CreateCompletionRequest)."),
    Endpoint.embeddings: ("input", "OpenAI's embedding request (CreateEmbeddingRequest)."),
}
_ANSWERS = {
    Endpoint.chat_completions: "OpenAI's chat completion object, as the provider answered it.",
    Endpoint.completions: "OpenAI's completion object, as the provider answered it.",
    Endpoint.embeddings: "OpenAI's embedding list, as the provider answered it.",
}


def _openapi(endpoint: Endpoint) -> dict[str, Any]:
    """The request body the route reads itself: a JSON object with a string ``model`` and no ``stream``; the rest
    is the provider's to check (the field OpenAI requires besides ``model`` is listed, not checked here)."""
    field, description = _REQUIRED[endpoint]
    schema = {
        "type": "object",
        "description": f"{description} Fields other than model and stream go to the provider as sent.",
        "required": ["model"],
        "properties": {
            "model": {"type": "string", "description": "A model id of GET /v1/models."},
            "stream": {"enum": [False, None], "description": "Streaming is not supported: false, null or absent."},
            field: {"description": "Required by OpenAI; checked by the provider."},
        },
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _responses(endpoint: Endpoint) -> dict[int | str, dict[str, Any]]:
    answer = {"content": {"application/json": {"schema": {"type": "object"}}}, "description": _ANSWERS[endpoint]}
    return {**error_responses(404), 200: answer}


def _model(body: bytes) -> str:
    """The ``model`` of a request body, which must be a JSON object that does not ask for a stream."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        message = "We could not parse the JSON body of your request: send a JSON object."
        raise InvalidRequestError(message, code="invalid_json") from None
    if not isinstance(parsed, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_type")
    if parsed.get("stream") not in (False, None):
        message = "Streaming is not supported by this server: send 'stream': false, or leave it out."
        raise InvalidRequestError(message, code="streaming_unsupported", param="stream")
    model = parsed.get("model")
    if model is None:
        message = "Missing required parameter: 'model'."
        raise InvalidRequestError(message, code="missing_required_parameter", param="model")
    if not isinstance(model, str):
        message = f"Invalid type for 'model': expected a string, but got {type(model).__name__} instead."
        raise InvalidRequestError(message, code="invalid_type", param="model")
    return model


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _refusal(answer: RawResponse) -> APIError:
    """A provider's non-2xx answer as an error of the tree (module docstring)."""
    status, parsed = answer.status_code, _json(answer.body)
    error = parsed.get("error", parsed) if isinstance(parsed, dict) else None
    fields: dict[str, Any] = error if isinstance(error, dict) else {}
    message = fields.get("message")
    text = bounded(message) if isinstance(message, str) and message else bounded(answer.body, 300) or "(no body)"
    code, param = upstream_field(fields.get("code")), upstream_field(fields.get("param"))
    if status in (401, 403):
        return UpstreamError(f"{_WHERE} refused the server's credentials ({status}): {text}", code=code)
    if status == 429:
        return RateLimitedError(text, code=code, param=param, retry_after=retry_after(answer.headers))
    if not 400 <= status < 500:
        return UpstreamError(f"{_WHERE} answered {status}: {text}", code=code)
    return error_for_status(status, text, code=code, param=param)


def _kept(headers: dict[str, str]) -> dict[str, str]:
    """The provider's headers worth passing on, when they are short printable ASCII."""
    return {
        name: value
        for name in _KEPT_HEADERS
        if (value := headers.get(name)) is not None and len(value) <= 200 and value.isascii() and value.isprintable()
    }


async def _forward(request: Request, endpoint: Endpoint) -> Response:
    try:
        body = await request.body()
    except ClientDisconnect:  # nobody reads the answer; it is not a failure of the server either
        message = "The client closed the connection before it sent the whole request body."
        raise InvalidRequestError(message, code="client_disconnected") from None
    model = _model(body)
    stack: Stack = request.app.state.stack
    answer = await stack.inference.raw_request(endpoint, model, body)
    if not answer.ok:
        raise _refusal(answer)
    if not isinstance(_json(answer.body), dict):
        message = f"{_WHERE} answered {answer.status_code} with a body that is not a JSON object."
        raise UpstreamError(message, code="invalid_response")
    return Response(answer.body, media_type="application/json", headers=_kept(dict(answer.headers)))


@router.post(
    "/chat/completions",
    summary="Create a chat completion",
    openapi_extra=_openapi(Endpoint.chat_completions),
    responses=_responses(Endpoint.chat_completions),
    response_class=Response,
)
async def chat_completions(request: Request) -> Response:
    return await _forward(request, Endpoint.chat_completions)


@router.post(
    "/completions",
    summary="Create a completion",
    openapi_extra=_openapi(Endpoint.completions),
    responses=_responses(Endpoint.completions),
    response_class=Response,
)
async def completions(request: Request) -> Response:
    return await _forward(request, Endpoint.completions)


@router.post(
    "/embeddings",
    summary="Create embeddings",
    openapi_extra=_openapi(Endpoint.embeddings),
    responses=_responses(Endpoint.embeddings),
    response_class=Response,
)
async def embeddings(request: Request) -> Response:
    return await _forward(request, Endpoint.embeddings)

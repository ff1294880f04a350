"""Schemathesis against a live ``llama-batches serve``: every operation of its ``/openapi.json``, with data that
fits the schema and data that does not. No answer may be a 5xx, and every answer must be one the document declares:
its status code, its content type, its body's schema and its headers' schemas.

The document itself is checked too: OpenAI's error schema on every error answer, no 422 (the server answers 400),
the bounds of ``limit``; and a method a path does not serve is a 405 with an ``Allow`` header naming those it does.

The server runs as a subprocess whose inference is the in-process fake backend, so the hypothesis runs happen in a
worker thread while the event loop keeps serving the backend.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
import pytest_asyncio
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err
from schemathesis.schemas import APIOperation

from llama_batches.server import create_app
from llama_batches.stack import build_stack

from .fake_backend import FakeBackend
from .server_process import ServerProcess
from .test_provider_reference import reference_config
from .test_server import Live, assert_openai_error, raw

pytestmark = pytest.mark.asyncio(loop_scope="module")

Operation = APIOperation[Any, Any, Any, Any]

ROUTES = [
    "POST /v1/batches",
    "GET /v1/batches",
    "GET /v1/batches/{batch_id}",
    "POST /v1/batches/{batch_id}/cancel",
    "POST /v1/files",
    "GET /v1/files",
    "GET /v1/files/{file_id}",
    "GET /v1/files/{file_id}/content",
    "DELETE /v1/files/{file_id}",
    "GET /v1/models",
    "GET /v1/models/{model_id}",
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/embeddings",
    "GET /v1/version",
    "GET /v1/providers",
    "GET /v1/providers/{provider_id}",
    "GET /v1/inspect/routes",
    "GET /v1/health",
]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
MAX_EXAMPLES = 60
SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    # No shrinking: a failure is reported with the example that found it, which keeps a failing run short.
    phases=[Phase.explicit, Phase.generate],
    # Schemathesis filters some generated cases (e.g. invalid headers); that is not a problem of the server.
    suppress_health_check=list(HealthCheck),
)
ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    directory = tmp_path_factory.mktemp("schema-server")
    async with FakeBackend() as backend, ServerProcess(reference_config(directory, backend), directory) as server:
        yield Live(server, backend, directory)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def document(live: Live) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{server_root(live)}/openapi.json") as answer:
        assert answer.status == 200
        body: dict[str, Any] = await answer.json()
        return body


def server_root(live: Live) -> str:
    return f"http://127.0.0.1:{live.server.port}"


def operations(live: Live) -> list[Operation]:
    """Every operation of the live server's document (also used by test_auth_isolation)."""
    schema = schemathesis.openapi.from_url(f"{server_root(live)}/openapi.json")
    found = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        found.append(result.ok())
    return found


def nothing_to_negate(operation: Operation) -> bool:
    """No body and only path parameters without constraints: every string is a valid path segment, so no case can
    be invalid."""
    parameters = list(operation.iter_parameters())
    return not list(operation.body) and all(
        p.location.value == "path" and "pattern" not in p.definition.get("schema", {}) for p in parameters
    )


def describe(operation: Operation, mode: GenerationMode, response: Any, failure: BaseException) -> str:
    request = response.request
    return (
        f"{operation.label} [{mode.value}] -> {response.status_code} {response.text[:300]}\n"
        f"  {str(failure)[:600]}\n"
        f"  {request.method} {request.url}\n"
        f"  Content-Type: {request.headers.get('Content-Type')!r}\n"
        f"  body: {repr(request.body)[:1000]}"
    )


def fuzz(operation: Operation, mode: GenerationMode, base_url: str) -> list[str]:
    """Run ``operation`` with generated cases; a description of each answer that fails a check."""
    failures: list[str] = []
    with requests.Session() as session:

        @SETTINGS
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Case[Any]) -> None:
            response = case.call(base_url=base_url, session=session, timeout=30)
            try:
                case.validate_response(response, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as failure:  # schemathesis raises a FailureGroup
                failures.append(describe(operation, mode, response, failure))

        try:
            run()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE or not nothing_to_negate(operation):
                raise
    return failures


async def test_the_schema_lists_every_route(live: Live) -> None:
    assert set(ROUTES) <= {operation.label for operation in await asyncio.to_thread(operations, live)}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize("route", ROUTES)
async def test_every_answer_is_one_the_document_declares(live: Live, route: str, mode: GenerationMode) -> None:
    (operation,) = [op for op in await asyncio.to_thread(operations, live) if op.label == route]
    failures = await asyncio.to_thread(fuzz, operation, mode, server_root(live))
    assert not failures, f"{len(failures)} failed checks, the first ones:\n" + "\n\n".join(failures[:3])


async def test_every_error_answer_is_declared_with_openais_error_schema_and_none_is_a_422(
    document: dict[str, Any],
) -> None:
    error = document["components"]["schemas"]["ErrorObject"]
    assert error["required"] == ["message", "type", "param", "code"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            # any request may carry a body, which is capped and timed: every operation can answer 408 and 413
            expected = {"400", "408", "413", "500"} | ({"404"} if "{" in path else set())
            assert "422" not in responses, (method, path)
            assert expected <= set(responses), (method, path, sorted(responses))
            for status, response in responses.items():
                if not status.startswith("2"):
                    assert response["content"]["application/json"]["schema"] == ERROR_SCHEMA, (method, path, status)
    create = document["paths"]["/v1/batches"]["post"]["responses"]
    assert {"409", "413", "429"} <= set(create)
    assert create["409"]["headers"]["x-should-retry"]["schema"] == {"type": "string", "enum": ["false"]}
    assert "Idempotent-Replayed" in create["200"]["headers"]
    assert "409" in document["paths"]["/v1/batches/{batch_id}/cancel"]["post"]["responses"]
    upload = document["paths"]["/v1/files"]["post"]["responses"]  # server.uploads.max_concurrent_uploads
    assert upload["429"]["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):  # an unknown model; the backend's
        assert {"404", "429", "502", "503", "504"} <= set(document["paths"][path]["post"]["responses"]), path
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == ["model"] and body["properties"]["stream"]["enum"] == [False, None]
    for path in ("/v1/version", "/v1/providers", "/v1/inspect/routes"):  # answered by the server itself
        assert not {"429", "502", "503", "504"} & set(document["paths"][path]["get"]["responses"]), path


@pytest.mark.parametrize(("path", "bounds"), [("/v1/batches", (1, 100)), ("/v1/files", (1, 10_000))])
async def test_limit_declares_its_bounds_and_the_server_keeps_them(
    live: Live, document: dict[str, Any], path: str, bounds: tuple[int, int]
) -> None:
    (limit,) = [p for p in document["paths"][path]["get"]["parameters"] if p["name"] == "limit"]
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == bounds
    for value in (bounds[0] - 1, bounds[1] + 1):
        status, _, body = await raw(live, "GET", path.removeprefix("/v1"), params={"limit": str(value)})
        assert status == 400, body
        assert_openai_error(body, param="limit")
    for value in bounds:
        status, _, body = await raw(live, "GET", path.removeprefix("/v1"), params={"limit": str(value)})
        assert status == 200, body


def _concrete(path: str) -> str:
    for name, value in (("batch_id", "batch_x"), ("file_id", "file-x"), ("model_id", "m"), ("provider_id", "p")):
        path = path.replace("{" + name + "}", value)
    return path


async def test_a_method_a_path_does_not_serve_is_a_405_with_allow(live: Live, document: dict[str, Any]) -> None:
    checked = 0
    for path, item in document["paths"].items():
        declared = {method.upper() for method in item}
        for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - declared):
            status, headers, body = await raw(live, method, _concrete(path).removeprefix("/v1"))
            assert status == 405, (method, path, body)
            assert {m.strip() for m in headers["Allow"].split(",")} == declared, (method, path, headers["Allow"])
            error = assert_openai_error(body)
            assert error["code"] == "method_not_allowed" and method in error["message"]
            checked += 1
    assert checked >= 30


async def test_with_auth_every_operation_but_health_declares_401_and_the_bearer_scheme(tmp_path: Path) -> None:
    config = reference_config(tmp_path, cast(FakeBackend, SimpleNamespace(base_url="http://127.0.0.1:9/v1")))
    config["server"] = {"auth": {"api_keys": [{"key": "k" * 32, "principal": "robot"}]}}
    app = create_app(build_stack(config))  # the stack is not started: only its plan is read
    document = copy.deepcopy(app.openapi())
    assert document["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            public = path == "/v1/health"
            assert ("401" in operation["responses"]) is not public, (method, path)
            assert ("security" in operation) is not public, (method, path)
    assert app.openapi() == document  # completing the document again changes nothing

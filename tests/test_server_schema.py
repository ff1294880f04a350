"""Schemathesis against a live ``llama-batches serve``: every operation of its ``/openapi.json``, with data that
fits the schema and data that does not, and no answer may be a 5xx.

The server runs as a subprocess whose inference is the in-process fake backend, so the hypothesis runs happen in a
worker thread while the event loop keeps serving the backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.schemas import APIOperation

from .fake_backend import FakeBackend
from .server_process import ServerProcess
from .test_provider_reference import reference_config
from .test_server import Live

pytestmark = pytest.mark.asyncio(loop_scope="module")

Operation = APIOperation[Any, Any, Any, Any]

MAX_EXAMPLES = 25
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


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    directory = tmp_path_factory.mktemp("schema-server")
    async with FakeBackend() as backend, ServerProcess(reference_config(directory, backend), directory) as server:
        yield Live(server, backend, directory)


def server_root(live: Live) -> str:
    return f"http://127.0.0.1:{live.server.port}"


def operations(live: Live) -> list[Operation]:
    schema = schemathesis.openapi.from_url(f"{server_root(live)}/openapi.json")
    found = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        found.append(result.ok())
    return found


def nothing_to_negate(operation: Operation) -> bool:
    """No body and only path parameters: every string is a valid path segment, so no case can be invalid."""
    parameters = list(operation.iter_parameters())
    return not list(operation.body) and all(p.location.value == "path" for p in parameters)


def fuzz(operation: Operation, mode: GenerationMode, base_url: str) -> list[str]:
    """Run ``operation`` with generated cases; a description of each 5xx: method, URL, body and answer."""
    failures: list[str] = []
    with requests.Session() as session:

        @SETTINGS
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Case[Any]) -> None:
            response = case.call(base_url=base_url, session=session, timeout=30)
            try:
                case.validate_response(response, checks=[not_a_server_error])
            except (Exception, BaseExceptionGroup):  # schemathesis raises a FailureGroup
                request = response.request
                failures.append(
                    f"{operation.label} [{mode.value}] -> {response.status_code} {response.text[:300]}\n"
                    f"  {request.method} {request.url}\n"
                    f"  Content-Type: {request.headers.get('Content-Type')!r}\n"
                    f"  body: {repr(request.body)[:1500]}"
                )

        try:
            run()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE or not nothing_to_negate(operation):
                raise
    return failures


async def test_the_schema_lists_every_route(live: Live) -> None:
    labels = {op.label for op in await asyncio.to_thread(operations, live)}
    assert {
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
        "GET /v1/health",
    } <= labels


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
async def test_no_generated_request_gets_a_5xx(live: Live, mode: GenerationMode) -> None:
    failures: list[str] = []
    for operation in await asyncio.to_thread(operations, live):
        failures += await asyncio.to_thread(fuzz, operation, mode, server_root(live))
    assert not failures, f"{len(failures)} server errors, the first ones:\n" + "\n\n".join(failures[:5])

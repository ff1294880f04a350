"""llama-stack's HTTP surface on a real ``llama-batches serve`` (``server.auth`` on): ``/v1/models`` in OpenAI's shape
and llama-stack 0.7.3's at once, ``/v1/version``, ``/v1/providers``, ``/v1/providers/{provider_id}`` and
``/v1/inspect/routes`` in llama-stack's shapes, from what the stack really has.

Read with raw HTTP and the openai SDK here, and with the real ``llama-stack-client`` CLI and Python SDK, which need
Python 3.12: they run in the cached venv of :mod:`tests.llama_stack_venv`, in a subprocess (skipped, saying why,
on a machine without Python 3.12).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio

import llama_batches
from llama_batches.server.routes_llama_stack import redacted

from .fake_backend import FakeBackend
from .server_process import ServerProcess
from .test_provider_reference import reference_config
from .test_server import Live, assert_openai_error

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = "surface-key-0123456789abcdef"
DEADLINE_S = 20.0
CLI_DEADLINE_S = 120.0
REGISTERED = [
    {"model_id": "chat-alias", "provider_id": "fake", "provider_model_id": "fake-model", "metadata": {"ctx": 4096}},
    {"model_id": "embedder", "provider_id": "fake", "provider_model_id": "fake-embed", "model_type": "embedding"},
]
EXPECTED_MODELS: list[tuple[str, dict[str, Any]]] = [
    ("chat-alias", {"provider_resource_id": "fake-model", "model_type": "llm", "metadata": {"ctx": 4096}}),
    ("embedder", {"provider_resource_id": "fake-embed", "model_type": "embedding", "metadata": {}}),
    ("fake/fake-model", {"provider_resource_id": "fake-model", "provider_id": "fake"}),  # a slash in the id
]
PROVIDERS = {
    ("files", "localfs", "inline::localfs"),
    ("inference", "fake", "remote::openai"),
    ("batches", "reference", "inline::reference"),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    directory = tmp_path_factory.mktemp("llama-stack-surface")
    async with FakeBackend() as backend:
        config = reference_config(directory, backend)
        config["registered_resources"]["models"] = REGISTERED
        config["apis"].append("safety")  # an API llama-batches does not implement: skipped, so not listed
        config["providers"]["safety"] = [{"provider_id": "guard", "provider_type": "inline::llama-guard"}]
        config["server"] = {"auth": {"api_keys": [{"key": KEY, "principal": "alice"}]}}
        async with ServerProcess(config, directory) as server:
            yield Live(server, backend, directory)


async def get(live: Live, path: str, *, token: str | None = KEY, **params: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(live.base_url + path, headers=headers, params=params) as answer,
    ):
        return answer.status, await answer.json()


def assert_both_shapes(model: dict[str, Any]) -> None:
    """A model object that OpenAI's and llama-stack's clients both read in full."""
    assert model["id"] == model["identifier"] and model["object"] == "model" and model["type"] == "model"
    assert isinstance(model["created"], int) and model["owned_by"] == model["provider_id"]
    own = {key: model[key] for key in ("model_type", "provider_id", "provider_resource_id")}
    assert model["custom_metadata"] == {**model["metadata"], **own}
    assert None not in own.values()


async def test_models_answer_in_openais_shape_and_llama_stacks(live: Live) -> None:
    status, listed = await get(live, "/models")
    assert status == 200 and listed["object"] == "list"
    by_id = {model["id"]: model for model in listed["data"]}
    assert {"chat-alias", "embedder", "fake-model", "fake/fake-model", "fake-embed"} <= set(by_id)
    for model in listed["data"]:
        assert_both_shapes(model)
    for model_id, expected in EXPECTED_MODELS:
        status, model = await get(live, f"/models/{model_id}")
        assert status == 200, model
        assert_both_shapes(model)
        assert model == by_id[model_id] and {key: model[key] for key in expected} == expected
    status, missing = await get(live, "/models/no-such-model")
    assert status == 404 and assert_openai_error(missing, param="model")["code"] == "model_not_found"


async def test_the_openai_sdk_reads_the_models(live: Live) -> None:
    async with openai.AsyncOpenAI(base_url=live.base_url, api_key=KEY, max_retries=0, timeout=DEADLINE_S) as sdk:
        ids = [model.id async for model in sdk.models.list()]
        model = await sdk.models.retrieve("chat-alias")
    assert "chat-alias" in ids and (model.id, model.owned_by, model.object) == ("chat-alias", "fake", "model")


async def test_the_version_is_llama_batches_own(live: Live) -> None:
    assert await get(live, "/version") == (200, {"version": llama_batches.__version__})


async def test_providers_are_those_the_stack_serves_with_secrets_redacted(live: Live) -> None:
    status, listed = await get(live, "/providers")
    assert status == 200
    assert {(p["api"], p["provider_id"], p["provider_type"]) for p in listed["data"]} == PROVIDERS
    (inference,) = [p for p in listed["data"] if p["api"] == "inference"]
    assert inference["config"] == {"base_url": live.backend.base_url, "api_key": "********"}
    for provider in listed["data"]:  # no provider of llama-batches implements health(): none is made up
        assert provider["health"]["status"] == "Not Implemented"
    assert await get(live, "/providers/fake") == (200, inference)
    status, missing = await get(live, "/providers/guard")  # in the config, but skipped: not served
    assert status == 404 and assert_openai_error(missing, param="provider_id")["code"] == "not_found"


async def test_redaction_covers_secret_keys_at_any_depth_and_url_passwords() -> None:
    config = {
        "api_key": "sk-1",
        "nested": {"password": "p", "max_tokens": 5, "list": [{"auth_token": "t"}, "plain"]},
        "url": "postgresql://user:pw@db:5432/x",
        "base_url": "http://host/v1",
    }
    assert redacted(config) == {
        "api_key": "********",
        "nested": {"password": "********", "max_tokens": 5, "list": [{"auth_token": "********"}, "plain"]},
        "url": "postgresql://user:********@db:5432/x",
        "base_url": "http://host/v1",
    }


async def test_inspect_routes_lists_the_servers_own_routes_and_their_providers(live: Live) -> None:
    status, listed = await get(live, "/inspect/routes")
    assert status == 200
    routes = {(r["method"], r["route"]): r["provider_types"] for r in listed["data"]}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{live.server.port}/openapi.json") as a,
    ):
        document = await a.json()
    assert set(routes) == {(m.upper(), path) for path, item in document["paths"].items() for m in item}
    assert routes[("POST", "/v1/chat/completions")] == ["remote::openai"]
    assert routes[("GET", "/v1/models/{model_id}")] == ["remote::openai"]
    assert routes[("POST", "/v1/batches")] == ["inline::reference"]
    assert routes[("DELETE", "/v1/files/{file_id}")] == ["inline::localfs"]
    assert routes[("GET", "/v1/version")] == routes[("GET", "/v1/health")] == []
    assert await get(live, "/inspect/routes", api_filter="v1") == (200, listed)
    for level in ("v1alpha", "v1beta", "deprecated"):
        assert await get(live, "/inspect/routes", api_filter=level) == (200, {"data": []})
    status, refused = await get(live, "/inspect/routes", api_filter="v2")
    assert status == 400 and assert_openai_error(refused, param="api_filter")


@pytest.mark.parametrize("path", ["/version", "/providers", "/providers/fake", "/inspect/routes", "/models/embedder"])
async def test_without_a_token_the_llama_stack_routes_are_401s(live: Live, path: str) -> None:
    status, body = await get(live, path, token=None)
    assert status == 401 and assert_openai_error(body)["type"] == "authentication_error"


# llama-stack-client (Python 3.12) --------------------------------------------------------------------------------


def run(command: list[str], home: Path) -> str:
    """``command``'s output; it must succeed. HOME is empty (no client config file there overrides --endpoint),
    the terminal wide (rich would wrap the tables)."""
    env = {**os.environ, "HOME": str(home), "COLUMNS": "250", "NO_COLOR": "1"}
    env.pop("LLAMA_STACK_CLIENT_BASE_URL", None)
    env.pop("LLAMA_STACK_CLIENT_API_KEY", None)
    done = subprocess.run(command, capture_output=True, text=True, timeout=CLI_DEADLINE_S, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Failed to" not in done.stdout, done.stdout  # the CLI prints its errors and exits 0
    return done.stdout


async def test_the_llama_stack_client_cli_reads_models_version_and_providers(
    live: Live, tmp_path: Path, llama_stack_bin: Path
) -> None:
    cli = [str(llama_stack_bin / "llama-stack-client")]
    cli += ["--endpoint", f"http://127.0.0.1:{live.server.port}", "--api-key", KEY]
    listed = await asyncio.to_thread(run, [*cli, "models", "list"], tmp_path)
    rows = {line.split("│")[2].strip(): line for line in listed.splitlines() if line.count("│") == 6}
    assert {"chat-alias", "embedder", "fake-model"} <= set(rows), listed
    assert [cell.strip() for cell in rows["embedder"].split("│")[1:6]] == [
        "embedding",
        "embedder",
        "fake-embed",
        "",
        "fake",
    ]
    assert "fake-model" in rows["chat-alias"] and "'ctx': 4096" in rows["chat-alias"]
    shown = await asyncio.to_thread(run, [*cli, "models", "get", "chat-alias"], tmp_path)
    row = [line for line in shown.splitlines() if "chat-alias" in line]
    assert len(row) == 1 and all(value in row[0] for value in ("llm", "fake-model", "fake", "'ctx': 4096")), shown
    version = await asyncio.to_thread(run, [*cli, "inspect", "version"], tmp_path)
    assert f"version='{llama_batches.__version__}'" in version, version
    providers = await asyncio.to_thread(run, [*cli, "providers", "list"], tmp_path)
    found = {tuple(cell.strip() for cell in line.split("│")[1:4]) for line in providers.splitlines() if "│" in line}
    assert found >= PROVIDERS, providers


SDK_SCRIPT = """
import json, sys
from llama_stack_client import LlamaStackClient

client = LlamaStackClient(base_url=sys.argv[1], api_key=sys.argv[2], timeout=30, max_retries=0)
model = client.models.retrieve("chat-alias")
listed = client.models.list()
print(json.dumps({
    "retrieved": {
        "identifier": model.identifier, "provider_id": model.provider_id,
        "provider_resource_id": model.provider_resource_id, "model_type": model.api_model_type,
        "metadata": model.metadata, "type": model.type,
    },
    "listed": {
        m.identifier: [m.provider_id, m.provider_resource_id, m.model_type, m.metadata] for m in listed
    },
    "version": client.inspect.version().version,
    "providers": [[p.api, p.provider_id, p.provider_type, p.config, p.health] for p in client.providers.list()],
    "routes": [[r.method, r.route, r.provider_types] for r in client.routes.list()],
}))
"""


async def test_the_llama_stack_client_sdk_reads_every_field(live: Live, tmp_path: Path, llama_stack_bin: Path) -> None:
    python = str(llama_stack_bin / "python")
    root = f"http://127.0.0.1:{live.server.port}"
    out = json.loads(await asyncio.to_thread(run, [python, "-c", SDK_SCRIPT, root, KEY], tmp_path))
    assert out["retrieved"] == {
        "identifier": "chat-alias",
        "provider_id": "fake",
        "provider_resource_id": "fake-model",
        "model_type": "llm",
        "metadata": {"ctx": 4096},
        "type": "model",
    }
    assert out["listed"]["chat-alias"] == ["fake", "fake-model", "llm", {"ctx": 4096}]
    assert out["listed"]["embedder"] == ["fake", "fake-embed", "embedding", None]  # the client says None for {}
    assert out["version"] == llama_batches.__version__
    assert {(api, pid, kind) for api, pid, kind, _, _ in out["providers"]} == PROVIDERS
    assert all(health["status"] == "Not Implemented" for *_, health in out["providers"])
    assert ["POST", "/v1/chat/completions", ["remote::openai"]] in out["routes"]

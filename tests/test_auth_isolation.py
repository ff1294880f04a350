"""Two principals, A (alice) and B (bob), drive a real ``llama-batches serve`` through the openai SDK, with the
token as ``api_key``: once with JWTs checked against a JWKS served over loopback, once with ``api_keys``.

B gets a 404 (the same one as for an id that never existed) for A's batch and files on every route; B's lists
never show A's items; B reusing A's idempotency key, even with A's very parameters, gets a new batch of its own
that cannot read A's input. Schemathesis finds no 5xx for an authenticated client and only 401s without a token.
The identity provider on loopback, :class:`FakeIdP`, is here; ``test_auth`` uses it too.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import jwt
import openai
import pytest
import pytest_asyncio
import requests
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode

from . import test_server_schema as schema
from .conformance.batches import chat_line, jsonl
from .fake_backend import FakeBackend
from .server_process import ServerProcess
from .test_provider_reference import reference_config
from .test_server import Live, wait_batch

pytestmark = pytest.mark.asyncio(loop_scope="module")

MISSING_BATCH = "batch_00000000000000000000000000000000"
MISSING_FILE = "file-00000000000000000000000000000000"
SETTINGS = settings(schema.SETTINGS, max_examples=10)


# the identity provider ---------------------------------------------------------------------------------------


AUDIENCE = "llama-batches"
_KEYS: dict[str, rsa.RSAPrivateKey] = {}


def rsa_key(name: str) -> rsa.RSAPrivateKey:
    """A 2048-bit RSA key, generated once per name and test session."""
    if name not in _KEYS:
        _KEYS[name] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _KEYS[name]


def public_jwk(kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key(kid).public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


class FakeIdP:
    """An identity provider on loopback: ``GET /jwks``, ``POST /introspect`` (client ``batches``/``s3cret``, HTTP
    Basic or form) and ``POST /custom`` (llama-stack's custom auth request and answer).

    ``published`` lists the kids in the JWKS; ``active`` maps opaque tokens to introspection answers; ``custom``
    maps tokens to principals; ``*_status`` force an answer status; ``*_requests`` record what came in."""

    CLIENT = ("batches", "s3cret")

    def __init__(self) -> None:
        self.published = ["k1"]
        self.jwks_status = 200
        self.jwks_fetches = 0
        self.active: dict[str, dict[str, Any]] = {}
        self.introspect_requests: list[dict[str, str]] = []
        self.custom: dict[str, str] = {}
        self.custom_status: int | None = None
        self.custom_requests: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.issuer}{path}"

    def token(
        self, sub: str | None = "alice", *, kid: str | None = "k1", signer: str | None = None, **claims: Any
    ) -> str:
        """An RS256 JWT for ``sub``, valid for 5 minutes, signed with key ``signer`` (default: ``kid``'s)."""
        now = int(time.time())
        payload = {"iss": self.issuer, "aud": AUDIENCE, "iat": now, "exp": now + 300, "sub": sub, **claims}
        payload = {k: v for k, v in payload.items() if v is not None}
        headers = {"kid": kid} if kid is not None else {}
        return jwt.encode(payload, rsa_key(signer or kid or "k1"), algorithm="RS256", headers=headers)

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        if self.jwks_status != 200:
            return web.json_response({"error": "down"}, status=self.jwks_status)
        return web.json_response({"keys": [public_jwk(kid) for kid in self.published]})

    async def _introspect(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.introspect_requests.append(form)
        basic = "Basic " + base64.b64encode(":".join(self.CLIENT).encode()).decode()
        in_body = (form.get("client_id"), form.get("client_secret")) == self.CLIENT
        if request.headers.get("Authorization") != basic and not in_body:
            return web.json_response({"error": "invalid_client"}, status=401)
        return web.json_response(self.active.get(form.get("token", ""), {"active": False}))

    async def _custom(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.custom_requests.append(body)
        if self.custom_status is not None:
            return web.json_response({"message": "forced"}, status=self.custom_status)
        principal = self.custom.get(body.get("api_key"))
        if principal is None:
            return web.json_response({"message": "unknown key"}, status=401)
        return web.json_response({"principal": principal, "attributes": {"roles": ["user"]}})

    async def __aenter__(self) -> FakeIdP:
        app = web.Application()
        app.router.add_get("/jwks", self._jwks)
        app.router.add_post("/introspect", self._introspect)
        app.router.add_post("/custom", self._custom)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def jwt_auth(idp: FakeIdP, **provider: Any) -> dict[str, Any]:
    """A ``server.auth`` block: oauth2_token with the IdP's JWKS, issuer and audience."""
    config = {"type": "oauth2_token", "issuer": idp.issuer, "audience": AUDIENCE, "jwks": {"uri": idp.url("/jwks")}}
    return {"provider_config": {**config, **provider}}


def introspection_auth(idp: FakeIdP, *, in_body: bool = False) -> dict[str, Any]:
    client_id, secret = FakeIdP.CLIENT
    introspection = {
        "url": idp.url("/introspect"),
        "client_id": client_id,
        "client_secret": secret,
        "send_secret_in_body": in_body,
    }
    return {"provider_config": {"type": "oauth2_token", "introspection": introspection}}


API_KEY_A = "key-a-0123456789abcdef"
API_KEY_B = "key-b-0123456789abcdef"
API_KEYS = {"api_keys": [{"key": API_KEY_A, "principal": "alice"}, {"key": API_KEY_B, "principal": "bob"}]}


@dataclass
class Deployment:
    """A server with ``server.auth``, the identity provider and backend behind it, and a token per principal."""

    mode: str
    live: Live
    idp: FakeIdP
    tokens: dict[str, str]

    def client(self, who: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.live.base_url, api_key=self.tokens[who], max_retries=0)

    def url(self, path: str) -> str:  # a path from the root, not from /v1
        return self.live.base_url.removesuffix("/v1") + path


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["jwt", "api_keys"])
async def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    mode: str = request.param
    directory = tmp_path_factory.mktemp(f"auth-{mode}")
    async with FakeIdP() as idp, FakeBackend() as backend:
        config = reference_config(directory, backend)
        if mode == "jwt":
            config["server"] = {"auth": jwt_auth(idp)}
            expires = int(time.time()) + 3600
            tokens = {who: idp.token(who, exp=expires) for who in ("alice", "bob")}
        else:
            config["server"] = {"auth": API_KEYS}
            tokens = {"alice": API_KEY_A, "bob": API_KEY_B}
        async with ServerProcess(config, directory) as server:
            yield Deployment(mode, Live(server, backend, directory), idp, tokens)


async def a_batch(client: openai.AsyncOpenAI, tag: str, **create: Any) -> tuple[str, openai.types.Batch]:
    """Upload an input of two requests and create a batch on it: (input file id, batch)."""
    lines = [chat_line(i, content=f"{tag} {i}") for i in range(2)]
    uploaded = await client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", **create
    )
    return uploaded.id, batch


def not_found(exc: openai.NotFoundError, resource_id: str, missing_id: str, missing: openai.NotFoundError) -> None:
    """``exc`` (for another's resource) is exactly the 404 for an id that never existed."""
    seen, never = exc.response.json()["error"], missing.response.json()["error"]
    assert seen["message"].replace(resource_id, missing_id) == never["message"]
    assert (seen["type"], seen["code"], seen["param"]) == (never["type"], never["code"], never["param"])


# authentication over HTTP ------------------------------------------------------------------------------------


async def test_a_request_without_a_valid_token_is_a_401_on_every_route(deployment: Deployment) -> None:
    async with openai.AsyncOpenAI(base_url=deployment.live.base_url, api_key="wrong-token", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.batches.list()
    assert caught.value.response.headers["www-authenticate"].startswith("Bearer ")
    assert caught.value.response.json()["error"]["type"] == "authentication_error"
    routes = [("GET", "/batches"), ("POST", "/batches"), ("GET", "/batches/x"), ("POST", "/batches/x/cancel"),
              ("GET", "/files"), ("POST", "/files"), ("GET", "/files/x"), ("GET", "/files/x/content"),
              ("DELETE", "/files/x"), ("GET", "/models"), ("GET", "/no-such-route")]  # fmt: skip
    async with aiohttp.ClientSession() as session:
        for method, path in routes:
            async with session.request(method, deployment.live.base_url + path) as answer:
                assert answer.status == 401, (method, path)
                assert answer.headers["WWW-Authenticate"] == 'Bearer realm="llama-batches"'
        for public in ("/v1/health", "/openapi.json", "/docs"):
            async with session.get(deployment.url(public)) as answer:
                assert answer.status == 200, public


@pytest.mark.parametrize("deployment", ["jwt"], indirect=True)
@pytest.mark.parametrize(
    "claims",
    [{"exp": 1}, {"aud": "another-service"}, {"iss": "https://evil.example.com"}, {"kid": "k-unknown"}, "tampered"],
    ids=["expired", "audience", "issuer", "unknown-kid", "tampered"],
)
async def test_a_bad_jwt_is_refused_by_the_server(deployment: Deployment, claims: dict[str, Any] | str) -> None:
    alice, other_signature = deployment.tokens["alice"], deployment.idp.token("bob").rsplit(".", 1)[1]
    tampered = alice.rsplit(".", 1)[0] + "." + other_signature  # alice's claims, bob's signature
    token = tampered if isinstance(claims, str) else deployment.idp.token("alice", **claims)
    async with openai.AsyncOpenAI(base_url=deployment.live.base_url, api_key=token, max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.files.list()
    assert 'error="invalid_token"' in caught.value.response.headers["www-authenticate"]
    assert token not in caught.value.response.text


# isolation ---------------------------------------------------------------------------------------------------


async def test_b_gets_a_404_for_a_batch_and_files_on_every_route(deployment: Deployment) -> None:
    async with deployment.client("alice") as alice, deployment.client("bob") as bob:
        input_id, batch = await a_batch(alice, f"isolation {deployment.mode}")
        done = await wait_batch(alice, batch.id)
        assert done.status == "completed" and done.output_file_id
        output = (await alice.files.content(done.output_file_id)).content
        attempts: list[tuple[Any, str, str]] = [
            (bob.batches.retrieve, batch.id, MISSING_BATCH), (bob.batches.cancel, batch.id, MISSING_BATCH),
            *[(call, fid, MISSING_FILE) for fid in (input_id, done.output_file_id)
              for call in (bob.files.retrieve, bob.files.content, bob.files.delete)],
        ]  # fmt: skip
        for call, resource_id, missing_id in attempts:
            with pytest.raises(openai.NotFoundError) as theirs:
                await call(resource_id)
            with pytest.raises(openai.NotFoundError) as never:
                await call(missing_id)
            not_found(theirs.value, resource_id, missing_id, never.value)
        # nothing B tried changed anything of A's
        assert (await alice.batches.retrieve(batch.id)).status == "completed"
        assert (await alice.files.content(done.output_file_id)).content == output
        assert (await alice.files.retrieve(input_id)).id == input_id


async def test_b_cannot_cancel_a_running_batch_of_a(deployment: Deployment) -> None:
    backend = deployment.live.backend
    async with deployment.client("alice") as alice, deployment.client("bob") as bob:
        backend.latency_s = 1.0
        try:
            _, batch = await a_batch(alice, f"cancel {deployment.mode}")
            with pytest.raises(openai.NotFoundError):
                await bob.batches.cancel(batch.id)
            assert (await alice.batches.retrieve(batch.id)).status in ("validating", "in_progress")
        finally:
            backend.latency_s = 0.0
        assert (await wait_batch(alice, batch.id)).status == "completed"


async def test_lists_never_show_another_principals_items(deployment: Deployment) -> None:
    async with deployment.client("alice") as alice, deployment.client("bob") as bob:
        mine = {who: await a_batch(client, f"lists {who} {deployment.mode}") for who, client in
                (("alice", alice), ("bob", bob))}  # fmt: skip
        done = {who: await wait_batch(c, mine[who][1].id) for who, c in (("alice", alice), ("bob", bob))}
        for who, client in (("alice", alice), ("bob", bob)):
            other = "bob" if who == "alice" else "alice"
            batches = {b.id async for b in client.batches.list(limit=100)}
            files = {f.id async for f in client.files.list()}
            assert mine[who][1].id in batches and mine[other][1].id not in batches
            assert {mine[who][0], done[who].output_file_id} <= files
            assert not {mine[other][0], done[other].output_file_id} & files


async def test_the_same_idempotency_key_makes_independent_batches(deployment: Deployment) -> None:
    key = {"idempotency_key": f"shared-key-{deployment.mode}"}
    async with deployment.client("alice") as alice, deployment.client("bob") as bob:
        input_id, first = await a_batch(alice, f"idem {deployment.mode}", extra_body=key)
        params: dict[str, Any] = {"input_file_id": input_id, "endpoint": "/v1/chat/completions"}
        raw = await bob.batches.with_raw_response.create(**params, completion_window="24h", extra_body=key)
        theirs = raw.parse()
        assert theirs.id != first.id and raw.headers.get("idempotent-replayed") is None
        again = await bob.batches.with_raw_response.create(**params, completion_window="24h", extra_body=key)
        assert again.parse().id == theirs.id and again.headers["idempotent-replayed"] == "true"
        failed = await wait_batch(bob, theirs.id)  # B's batch cannot read A's input file
        assert failed.status == "failed" and failed.errors and failed.errors.data
        assert failed.errors.data[0].param == "input_file_id"
        assert (await wait_batch(alice, first.id)).status == "completed"


# limits ------------------------------------------------------------------------------------------------------

IN_FLIGHT = "max_batches_in_flight_per_principal"


async def test_batches_in_flight_are_limited_per_principal(tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("in-flight")
    async with FakeBackend(latency_s=0.5) as backend:
        config = reference_config(directory, backend, **{IN_FLIGHT: 1})
        config["server"] = {"auth": API_KEYS}
        async with (
            ServerProcess(config, directory) as server,
            openai.AsyncOpenAI(base_url=server.base_url, api_key=API_KEY_A, max_retries=0) as alice,
            openai.AsyncOpenAI(base_url=server.base_url, api_key=API_KEY_B, max_retries=0) as bob,
        ):
            _, running = await a_batch(alice, "in flight 1")
            with pytest.raises(openai.RateLimitError) as caught:
                await a_batch(alice, "in flight 2")
            assert int(caught.value.response.headers["retry-after"]) >= 1
            _, other = await a_batch(bob, "in flight b")  # another principal is not limited by A's batches
            for client, batch in ((alice, running), (bob, other)):
                assert (await wait_batch(client, batch.id)).status == "completed"
            await a_batch(alice, "in flight 3")  # a finished batch frees its slot


# schemathesis ------------------------------------------------------------------------------------------------


def fuzz(operation: schema.Operation, mode: GenerationMode, root: str, token: str | None) -> list[str]:
    """Run ``operation`` with ~10 generated cases; a description of each answer that breaks the rule: no 5xx
    with a token, nothing but a 401 without one."""
    problems: list[str] = []
    if operation.label == "GET /v1/health":  # public
        return problems
    with requests.Session() as session:
        if token is not None:
            session.headers["Authorization"] = f"Bearer {token}"

        @SETTINGS
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Case[Any]) -> None:
            response = case.call(base_url=root, session=session, timeout=30)
            if response.status_code >= 500 if token is not None else response.status_code != 401:
                problems.append(f"{operation.label} [{mode.value}] -> {response.status_code} {response.text[:300]}")

        try:
            run()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE or not schema.nothing_to_negate(operation):
                raise
    return problems


@pytest.mark.parametrize("deployment", ["jwt"], indirect=True)
@pytest.mark.parametrize("authenticated", [True, False], ids=["with-token", "without-token"])
async def test_schemathesis_finds_no_5xx_with_a_token_and_only_401s_without(
    deployment: Deployment, authenticated: bool
) -> None:
    token = deployment.tokens["alice"] if authenticated else None
    problems: list[str] = []
    for operation in await asyncio.to_thread(schema.operations, deployment.live):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            problems += await asyncio.to_thread(fuzz, operation, mode, deployment.url(""), token)
    assert not problems, f"{len(problems)} problems, the first ones:\n" + "\n".join(problems[:5])

"""``server.auth``: the config in llama-stack's format, and every way a request gets (or does not get) a principal.

A fake identity provider runs on loopback over real HTTP (:class:`~tests.test_auth_isolation.FakeIdP`: a JWKS, an
RFC 7662 introspection endpoint and a llama-stack custom auth endpoint) and tokens are RS256 JWTs signed in the test
with ``cryptography`` keys. The middleware is exercised in-process around an app that answers the principal it was
served as; the real server is driven in ``test_auth_isolation``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llama_batches import load_config
from llama_batches.config_auth import AuthConfig, OAuth2JWKSConfig
from llama_batches.errors import ConfigError
from llama_batches.principal import current_principal
from llama_batches.server.auth import Authenticator, AuthMiddleware, AuthUnavailable, InvalidToken, JwksKeys

from .test_auth_isolation import (
    API_KEY_A,
    API_KEY_B,
    API_KEYS,
    AUDIENCE,
    FakeIdP,
    introspection_auth,
    jwt_auth,
    public_jwk,
)


@pytest.fixture
async def idp() -> AsyncIterator[FakeIdP]:
    async with FakeIdP() as running:
        yield running


async def _whoami(request: Request) -> JSONResponse:
    return JSONResponse({"principal": current_principal()})


class Gate:
    """The auth middleware around an app whose ``/v1/whoami`` answers the principal it was served as."""

    def __init__(self, auth: dict[str, Any]) -> None:
        self.authenticator = Authenticator(AuthConfig.model_validate(auth))
        app = Starlette(routes=[Route("/v1/whoami", _whoami), Route("/v1/health", _whoami)])
        transport = httpx2.ASGITransport(app=AuthMiddleware(app, self.authenticator, ["/v1/health"]))
        self.client = httpx2.AsyncClient(transport=transport, base_url="http://server")

    async def get(self, token: str | None = None, path: str = "/v1/whoami", **headers: str) -> httpx2.Response:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self.client.get(path, headers=headers)

    async def whoami(self, token: str) -> str:
        answer = await self.get(token)
        assert answer.status_code == 200, answer.text
        principal: str = answer.json()["principal"]
        return principal

    async def close(self) -> None:
        await self.client.aclose()
        await self.authenticator.close()


@pytest.fixture
async def gate_for() -> AsyncIterator[Callable[[dict[str, Any]], Gate]]:
    gates: list[Gate] = []

    def make(auth: dict[str, Any]) -> Gate:
        gates.append(Gate(auth))
        return gates[-1]

    yield make
    for gate in gates:
        await gate.close()


def assert_refused(answer: httpx2.Response, token: str | None = None, *, invalid: bool = True) -> dict[str, Any]:
    """A 401 in OpenAI's shape with a Bearer challenge, which never echoes the token."""
    assert answer.status_code == 401, answer.text
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and ('error="invalid_token"' in challenge) == invalid
    error: dict[str, Any] = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "authentication_error"
    assert token is None or token not in answer.text
    return error


# the config --------------------------------------------------------------------------------------------------


LLAMA_STACK_AUTH = {
    "provider_config": {
        "type": "oauth2_token",
        "jwks": {"uri": "https://idp.example.com/certs", "key_recheck_period": 600},
        "issuer": "https://idp.example.com",
        "audience": "llama-stack",
        "claims_mapping": {"sub": "roles", "groups": "teams"},
    },
    "access_policy": [{"permit": {"actions": ["read"]}, "when": "user in owners roles"}],
    "route_policy": [],
}


def test_a_llama_stack_auth_block_loads_unchanged() -> None:
    config = load_config({"server": {"port": 8321, "auth": LLAMA_STACK_AUTH}})
    auth = config.server.auth
    assert auth is not None and auth.enabled and auth.provider_config is not None
    assert auth.provider_config.type == "oauth2_token"


def test_no_server_auth_means_anonymous() -> None:
    assert load_config({"server": {"port": 8321}}).server.auth is None


@pytest.mark.parametrize(
    ("auth", "path"),
    [
        ({"provider_config": {"type": "github_token"}}, "server.auth.provider_config"),
        ({"provider_config": {"type": "oauth2_token"}}, "server.auth.provider_config"),
        ({"provider_config": {"type": "custom"}}, "server.auth.provider_config"),
        ({"provider_config": {"type": "oauth2_token", "jwks": {"uri": "x"}, "tls_cafile": "/no/ca.pem"}}, "tls_cafile"),
        ({"api_keys": [{"key": "short", "principal": "a"}]}, "server.auth.api_keys[0].key"),
        ({"api_keys": [{"key": API_KEY_A, "principal": "a\x00b"}]}, "server.auth.api_keys[0].principal"),
        ({"api_keys": [{"key": API_KEY_A, "principal": "a"}, {"key": API_KEY_A, "principal": "b"}]}, "api_keys"),
    ],
    ids=["unsupported-type", "no-jwks-nor-introspection", "custom-no-endpoint", "no-cafile", "short-key", "nul", "dup"],
)
def test_a_bad_auth_config_names_its_path(auth: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"server": {"auth": auth}})
    assert path in str(caught.value)


def test_secrets_never_show_in_a_repr() -> None:
    auth = AuthConfig.model_validate(
        {**introspection_auth(FakeIdP()), "api_keys": [{"key": API_KEY_A, "principal": "alice"}]}
    )
    text = repr(auth) + str(auth.model_dump())
    assert FakeIdP.CLIENT[1] not in text and API_KEY_A not in text


# JWTs and the JWKS -------------------------------------------------------------------------------------------


async def test_a_valid_jwt_serves_the_request_as_its_subject(idp: FakeIdP, gate_for: Callable[..., Gate]) -> None:
    gate = gate_for(jwt_auth(idp))
    assert await gate.whoami(idp.token("alice")) == "alice"
    assert await gate.whoami(idp.token("bob")) == "bob"
    assert idp.jwks_fetches == 1  # the key set is cached


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda idp: idp.token(exp=int(time.time()) - 60), "expired"),
        (lambda idp: idp.token(aud="someone-else"), "audience"),
        (lambda idp: idp.token(iss="https://evil.example.com"), "issuer"),
        (lambda idp: idp.token(kid="k-unknown"), "key"),
        (lambda idp: idp.token(kid="k1", signer="k-unknown"), "signature"),
        (lambda idp: _tampered(idp.token("alice")), "signature"),
        (lambda idp: idp.token(exp=None), "claim"),
        (lambda idp: idp.token(aud=None), "claim"),
        (lambda idp: idp.token(sub=None), "sub"),
        (lambda idp: jwt.encode({"sub": "x", "aud": AUDIENCE, "exp": 2**40}, "", algorithm="none"), "algorithm"),
        (lambda idp: "not-a-jwt", "not a JWT"),
    ],
    ids=["expired", "audience", "issuer", "unknown-kid", "wrong-key", "tampered", "no-exp", "no-aud", "no-sub",
         "alg-none", "garbage"],
)  # fmt: skip
async def test_a_bad_jwt_is_a_401_with_a_bearer_challenge(
    idp: FakeIdP, gate_for: Callable[..., Gate], make: Callable[[FakeIdP], str], reason: str
) -> None:
    gate = gate_for(jwt_auth(idp))
    token = make(idp)
    error = assert_refused(await gate.get(token), token)
    assert reason in error["message"], error
    assert error["code"] == "invalid_api_key"


def _tampered(token: str) -> str:
    """``token`` whose payload says ``sub: mallory``, the signature left as it was."""
    header, _, signature = token.split(".")
    payload = jwt.utils.base64url_decode(token.split(".")[1])
    forged = payload.replace(b'"alice"', b'"mallory"')
    return ".".join([header, jwt.utils.base64url_encode(forged).decode(), signature])


async def test_an_hs256_token_signed_with_the_public_key_is_refused(
    idp: FakeIdP, gate_for: Callable[..., Gate]
) -> None:
    gate = gate_for(jwt_auth(idp))
    await gate.whoami(idp.token())  # the keys are fetched
    secret = jwt.utils.base64url_decode(public_jwk("k1")["n"])
    now = int(time.time())
    claims = {"sub": "mallory", "aud": AUDIENCE, "iss": idp.issuer, "exp": now + 60}
    forged = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "k1"})
    assert "algorithm" in assert_refused(await gate.get(forged))["message"]


async def test_no_token_or_another_scheme_is_a_401(idp: FakeIdP, gate_for: Callable[..., Gate]) -> None:
    gate = gate_for(jwt_auth(idp))
    error = assert_refused(await gate.get(), invalid=False)
    assert "Bearer" in error["message"]
    assert_refused(await gate.get(Authorization="Basic YWxpY2U6cHc="))
    assert_refused(await gate.get(Authorization="Bearer "))
    assert (await gate.get(path="/v1/health")).json() == {"principal": "anonymous"}


async def test_claims_mapping_can_name_the_principal_claim(idp: FakeIdP, gate_for: Callable[..., Gate]) -> None:
    gate = gate_for(jwt_auth(idp, claims_mapping={"sub": "roles", "email": "principal"}))
    assert await gate.whoami(idp.token("u-123", email="alice@example.com")) == "alice@example.com"
    assert "email" in assert_refused(await gate.get(idp.token("u-123")))["message"]
    nested = gate_for(jwt_auth(idp, claims_mapping={"realm.user": "principal"}))
    assert await nested.whoami(idp.token("u-1", realm={"user": "carol"})) == "carol"


async def test_a_principal_with_control_characters_is_refused(idp: FakeIdP, gate_for: Callable[..., Gate]) -> None:
    gate = gate_for(jwt_auth(idp))
    assert_refused(await gate.get(idp.token("alice\x00bob")))
    assert_refused(await gate.get(idp.token("x" * 257)))


async def test_without_issuer_any_issuer_is_accepted(idp: FakeIdP, gate_for: Callable[..., Gate]) -> None:
    gate = gate_for(jwt_auth(idp, issuer=None))
    assert await gate.whoami(idp.token(iss="https://elsewhere.example.com")) == "alice"


async def test_an_unknown_kid_refetches_the_keys_at_most_every_30_seconds(idp: FakeIdP) -> None:
    now = [1000.0]
    keys = JwksKeys(OAuth2JWKSConfig(uri=idp.url("/jwks"), key_recheck_period=3600), clock=lambda: now[0])
    try:
        assert (await keys.key("k1"))["kid"] == "k1"
        idp.published = ["k1", "k2"]  # the issuer rotates keys
        for _ in range(5):
            with pytest.raises(InvalidToken):
                await keys.key("k2")
        assert idp.jwks_fetches == 1  # made-up key ids do not make us hammer the issuer
        now[0] += 30
        assert (await keys.key("k2"))["kid"] == "k2"
        assert idp.jwks_fetches == 2
        idp.published = ["k2"]
        now[0] += 3600  # the recheck period drops k1
        with pytest.raises(InvalidToken):
            await keys.key("k1")
        assert idp.jwks_fetches == 3
    finally:
        await keys.close()


async def test_a_jwks_outage_is_a_503_and_cached_keys_outlive_it(idp: FakeIdP) -> None:
    gate = Gate(jwt_auth(idp))
    now = [0.0]
    keys = JwksKeys(OAuth2JWKSConfig(uri=idp.url("/jwks"), key_recheck_period=60), clock=lambda: now[0])
    try:
        idp.jwks_status = 500
        answer = await gate.get(idp.token())
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "auth_unavailable"
        with pytest.raises(AuthUnavailable):
            await keys.key("k1")
        idp.jwks_status = 200
        with pytest.raises(AuthUnavailable):
            await keys.key("k1")  # a failed fetch is retried after 5 seconds, not on every request
        now[0] += 5
        assert (await keys.key("k1"))["kid"] == "k1"
        idp.jwks_status = 500
        now[0] += 120  # stale: the fetch fails, the cached key still verifies
        assert (await keys.key("k1"))["kid"] == "k1"
        assert idp.jwks_fetches == 4
    finally:
        await keys.close()
        await gate.close()


# introspection, custom endpoint, API keys --------------------------------------------------------------------


@pytest.mark.parametrize("in_body", [False, True], ids=["basic-auth", "secret-in-body"])
async def test_introspection_names_the_principal_of_an_active_token(
    idp: FakeIdP, gate_for: Callable[..., Gate], in_body: bool
) -> None:
    idp.active = {"opaque-a": {"active": True, "sub": "alice"}, "opaque-u": {"active": True, "username": "uma"}}
    idp.active["opaque-old"] = {"active": False, "sub": "alice"}
    gate = gate_for(introspection_auth(idp, in_body=in_body))
    assert await gate.whoami("opaque-a") == "alice"
    assert await gate.whoami("opaque-u") == "uma"
    assert "not active" in assert_refused(await gate.get("opaque-old"), "opaque-old")["message"]
    assert_refused(await gate.get("never-issued"), "never-issued")
    assert idp.introspect_requests[0]["token_type_hint"] == "access_token"
    assert ("client_secret" in idp.introspect_requests[0]) == in_body


async def test_introspection_with_bad_client_credentials_is_a_503(idp: FakeIdP, gate_for: Callable[..., Gate]) -> None:
    auth = introspection_auth(idp)
    auth["provider_config"]["introspection"]["client_secret"] = "wrong"
    answer = await gate_for(auth).get("opaque-a")
    assert answer.status_code == 503, answer.text


async def test_the_custom_endpoint_gets_llama_stacks_request_and_names_the_principal(
    idp: FakeIdP, gate_for: Callable[..., Gate]
) -> None:
    idp.custom = {"ck-alice": "alice"}
    gate = gate_for({"provider_config": {"type": "custom", "endpoint": idp.url("/custom")}})
    answer = await gate.client.get(
        "/v1/whoami?limit=5", headers={"Authorization": "Bearer ck-alice", "Cookie": "s=1", "X-Team": "ml"}
    )
    assert answer.json() == {"principal": "alice"}
    sent = idp.custom_requests[-1]
    assert sent["api_key"] == "ck-alice" and sent["request"]["path"] == "/v1/whoami"
    assert sent["request"]["params"] == {"limit": ["5"]} and sent["request"]["headers"]["x-team"] == "ml"
    assert not {"authorization", "cookie"} & set(sent["request"]["headers"])
    assert_refused(await gate.get("ck-mallory"), "ck-mallory")
    idp.custom_status = 502
    assert (await gate.get("ck-alice")).status_code == 503


async def test_api_keys_name_their_principals(gate_for: Callable[..., Gate]) -> None:
    gate = gate_for(API_KEYS)
    assert await gate.whoami(API_KEY_A) == "alice"
    assert await gate.whoami(API_KEY_B) == "bob"
    assert_refused(await gate.get(API_KEY_A + "x"), API_KEY_A)
    assert_refused(await gate.get(), invalid=False)


async def test_api_keys_work_next_to_a_jwt_provider(idp: FakeIdP, gate_for: Callable[..., Gate]) -> None:
    gate = gate_for({**jwt_auth(idp), **API_KEYS})
    assert await gate.whoami(API_KEY_B) == "bob"
    assert await gate.whoami(idp.token("alice")) == "alice"


async def test_tokens_are_never_logged(
    idp: FakeIdP, gate_for: Callable[..., Gate], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    idp.custom = {"ck-secret-alice": "alice"}
    gate = gate_for({"provider_config": {"type": "custom", "endpoint": idp.url("/custom")}})
    await gate.whoami("ck-secret-alice")
    await gate.get("ck-secret-mallory")
    idp.custom_status = 500
    await gate.get("ck-secret-outage")
    assert caplog.records and "ck-secret" not in caplog.text

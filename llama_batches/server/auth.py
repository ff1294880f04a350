"""Authentication: every request but ``/v1/health`` and the docs names its principal, or gets a 401.

:class:`AuthMiddleware` reads ``Authorization: Bearer <token>``, asks the :class:`Authenticator` who the bearer is
(an API key, a JWT checked against the issuer's JWKS, RFC 7662 introspection, or a custom endpoint) and serves the
request inside :func:`~llama_batches.principal.acting_as` that principal. No valid token: 401, OpenAI-shaped, with
``WWW-Authenticate: Bearer``; an authentication service that cannot answer: 503. Tokens are never logged nor stored
(API keys are compared by digest). Network calls use aiohttp on the event loop; the JWKS is cached.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import ssl
import time
from collections.abc import Callable, Collection
from typing import Any, Protocol
from urllib.parse import parse_qs

import aiohttp
import jwt
import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config_auth import (
    AuthConfig,
    CustomAuthConfig,
    OAuth2IntrospectionConfig,
    OAuth2JWKSConfig,
    OAuth2TokenAuthConfig,
    check_principal,
    claim_value,
)
from ..errors import APIError, AuthenticationError, ServiceUnavailableError
from ..principal import acting_as
from .errors import error_response

__all__ = ["AuthMiddleware", "AuthUnavailable", "Authenticator", "InvalidToken", "JwksKeys", "TokenVerifier"]

logger = logging.getLogger(__name__)

REALM = "llama-batches"
MAX_TOKEN_CHARS = 16 * 1024
MAX_ANSWER_BYTES = 1024 * 1024
MIN_REFETCH_S, RETRY_FAILED_FETCH_S = 30.0, 5.0
TIMEOUT = aiohttp.ClientTimeout(total=10)
_FORWARD_NOT = frozenset({"authorization", "proxy-authorization", "cookie"})
_ALGORITHMS = {
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "EC": frozenset({"ES256", "ES384", "ES512", "ES256K"}),
    "OKP": frozenset({"EdDSA"}),
}  # asymmetric only: a symmetric ("oct") key published in a JWKS would let anyone sign


class InvalidToken(Exception):
    """The token does not authenticate anyone. The message is safe to show the client (it never holds the token)."""


class AuthUnavailable(Exception):
    """The authentication service could not answer; the token may be valid."""


class TokenVerifier(Protocol):
    """``verify`` names a token's principal (or raises InvalidToken, AuthUnavailable); ``close`` ends connections."""

    async def verify(self, token: str, scope: Scope) -> str: ...

    async def close(self) -> None: ...


class _Http:
    """One lazily opened aiohttp session with the TLS settings of the config; answers read with a size bound."""

    def __init__(self, verify_tls: bool = True, cafile: str | None = None) -> None:
        self._verify_tls, self._cafile = verify_tls, cafile
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self._verify_tls:
            return False
        return ssl.create_default_context(cafile=self._cafile) if self._cafile else True

    async def request(self, method: str, url: str, **kwargs: Any) -> tuple[int, bytes]:
        """Status and body (redirects are not followed: a token is never resent elsewhere)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT, connector=aiohttp.TCPConnector(ssl=self._ssl()))
        try:
            async with self._session.request(method, url, allow_redirects=False, **kwargs) as response:
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise AuthUnavailable(f"the answer of {url} is larger than {MAX_ANSWER_BYTES} bytes")
                return response.status, bytes(body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AuthUnavailable(f"{url}: {type(exc).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _json_object(body: bytes, source: str) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise AuthUnavailable(f"{source} did not answer JSON") from None
    if not isinstance(value, dict):
        raise AuthUnavailable(f"{source} did not answer a JSON object")
    return value


def principal_from(claims: dict[str, Any], *paths: str) -> str:
    """The first of ``paths`` that holds a usable principal; InvalidToken when none does."""
    for path in paths:
        value = claim_value(claims, path)
        if value is not None:
            try:
                return check_principal(value)
            except ValueError:
                break
    raise InvalidToken(f"The token has no usable '{paths[0]}' claim to name its principal.")


class JwksKeys:
    """The issuer's public keys, cached; fetched again after ``key_recheck_period``, and for an unknown key id at most
    every ``min_refetch_s`` (made-up key ids cannot flood the issuer). A failed fetch keeps the keys it had."""

    def __init__(
        self,
        config: OAuth2JWKSConfig,
        http: _Http | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_refetch_s: float = MIN_REFETCH_S,
    ) -> None:
        self._config, self._http, self._clock, self._min_refetch_s = config, http or _Http(), clock, min_refetch_s
        self._keys: list[dict[str, Any]] = []
        self._attempt: float | None = None
        self._next_check = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str | None) -> dict[str, Any]:
        """The JWK a token with key id ``kid`` was signed with; InvalidToken for an unknown key."""
        if self._clock() >= self._next_check:
            await self._refresh(self._attempt)
        found = self._find(kid)
        if found is None and self._attempt is not None and self._clock() - self._attempt >= self._min_refetch_s:
            await self._refresh(self._attempt)
            found = self._find(kid)
        if not self._keys:
            raise AuthUnavailable(f"no usable key could be fetched from {self._config.uri}")
        if found is None:
            raise InvalidToken("The token was signed by a key the issuer does not publish.")
        return found

    def _find(self, kid: str | None) -> dict[str, Any] | None:
        if kid is None:
            return self._keys[0] if len(self._keys) == 1 else None
        return next((k for k in self._keys if k.get("kid") == kid), None)

    async def _refresh(self, seen: float | None) -> None:
        async with self._lock:
            if self._attempt != seen:
                return  # another request fetched while this one waited
            now = self._attempt = self._clock()
            try:
                self._keys = await self._fetch()
                self._next_check = now + self._config.key_recheck_period
            except AuthUnavailable as exc:
                logger.warning("could not fetch the JWKS (%s); %d cached keys kept", exc, len(self._keys))
                self._next_check = now + min(RETRY_FAILED_FETCH_S, self._config.key_recheck_period)

    async def _fetch(self) -> list[dict[str, Any]]:
        self.fetches += 1
        token = self._config.token
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token is not None else {}
        status, body = await self._http.request("GET", self._config.uri, headers=headers)
        if status != 200:
            raise AuthUnavailable(f"{self._config.uri} answered {status}")
        keys = _json_object(body, self._config.uri).get("keys")
        usable = [k for k in keys if _usable(k)] if isinstance(keys, list) else []
        if not usable:
            raise AuthUnavailable(f"{self._config.uri} lists no usable signing key")
        return usable

    async def close(self) -> None:
        """Close the connections to the JWKS host."""
        await self._http.close()


def _usable(jwk: Any) -> bool:
    if not isinstance(jwk, dict) or jwk.get("kty") not in _ALGORITHMS or jwk.get("use", "sig") != "sig":
        return False
    try:
        jwt.PyJWK(jwk)
    except jwt.PyJWTError:
        return False
    return True


_JWT_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "The token has expired."),
    (jwt.InvalidAudienceError, "The token is not meant for this server (audience)."),
    (jwt.InvalidIssuerError, "The token was not issued by the trusted issuer."),
    (jwt.MissingRequiredClaimError, "The token lacks a required claim (exp, aud or iss)."),
    (jwt.InvalidSignatureError, "The token's signature does not verify."),
)


class JwtVerifier:
    """JWTs signed by a key of the issuer's JWKS, for ``audience`` (and ``issuer`` when configured)."""

    def __init__(self, config: OAuth2TokenAuthConfig, keys: JwksKeys) -> None:
        self._config, self._keys = config, keys

    async def verify(self, token: str, scope: Scope) -> str:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("The token is not a JWT.") from None
        kid, algorithm = header.get("kid"), header.get("alg")
        if not (kid is None or isinstance(kid, str)) or not isinstance(algorithm, str):
            raise InvalidToken("The token's header is not valid.")
        jwk = await self._keys.key(kid)
        declared = jwk.get("alg")
        if algorithm not in ({declared} if declared else _ALGORITHMS[jwk["kty"]]):
            raise InvalidToken("The token's algorithm does not match its key.")
        claims = self._decode(token, jwk, algorithm)
        return principal_from(claims, self._config.principal_claim())

    def _decode(self, token: str, jwk: dict[str, Any], algorithm: str) -> dict[str, Any]:
        required = ["exp", "aud"] + (["iss"] if self._config.issuer else [])
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                jwt.PyJWK(jwk, algorithm).key,
                algorithms=[algorithm],
                audience=self._config.audience,
                issuer=self._config.issuer,
                options={"require": required},
            )
        except jwt.PyJWTError as exc:
            reason = next((text for kind, text in _JWT_REASONS if isinstance(exc, kind)), "The token is not valid.")
            raise InvalidToken(reason) from None
        return claims

    async def close(self) -> None:
        await self._keys.close()


class IntrospectionVerifier:
    """Opaque (or any) tokens checked by an RFC 7662 introspection endpoint."""

    def __init__(self, config: OAuth2TokenAuthConfig, introspection: OAuth2IntrospectionConfig, http: _Http) -> None:
        self._config, self._introspection, self._http = config, introspection, http

    async def verify(self, token: str, scope: Scope) -> str:
        settings = self._introspection
        secret = settings.client_secret.get_secret_value()
        form, headers = {"token": token, "token_type_hint": "access_token"}, {}
        if settings.send_secret_in_body:
            form |= {"client_id": settings.client_id, "client_secret": secret}
        else:
            basic = base64.b64encode(f"{settings.client_id}:{secret}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        status, body = await self._http.request("POST", settings.url, data=form, headers=headers)
        if status != 200:
            raise AuthUnavailable(f"the introspection endpoint answered {status}")
        answer = _json_object(body, "the introspection endpoint")
        if answer.get("active") is not True:
            raise InvalidToken("The token is not active.")
        mapped = self._config.principal_claim(default="")
        return principal_from(answer, *((mapped,) if mapped else ("sub", "username")))

    async def close(self) -> None:
        await self._http.close()


def _forwarded_headers(scope: Scope) -> dict[str, str]:
    pairs = ((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", []))
    return {name: value for name, value in pairs if name not in _FORWARD_NOT}


class CustomVerifier:
    """An endpoint that answers who the bearer is, with llama-stack's request and answer shapes."""

    def __init__(self, config: CustomAuthConfig, http: _Http) -> None:
        self._config, self._http = config, http

    async def verify(self, token: str, scope: Scope) -> str:
        request = {
            "path": scope.get("path", ""),
            "headers": _forwarded_headers(scope),
            "params": parse_qs(scope.get("query_string", b"").decode("latin-1")),
        }
        payload = orjson.dumps({"api_key": token, "request": request})
        headers = {"Content-Type": "application/json"}
        status, body = await self._http.request("POST", self._config.endpoint, data=payload, headers=headers)
        if status >= 500 or status in (408, 429):
            raise AuthUnavailable(f"the authentication endpoint answered {status}")
        if status != 200:
            raise InvalidToken("The authentication endpoint refused the token.")
        return principal_from(_json_object(body, "the authentication endpoint"), "principal")

    async def close(self) -> None:
        await self._http.close()


def bearer_token(scope: Scope) -> str | None:
    """The token of the ``Authorization: Bearer`` header; None without one; InvalidToken for another scheme."""
    values: list[bytes] = [v for k, v in scope.get("headers", []) if k.lower() == b"authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise InvalidToken("Send one Authorization header.")
    scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token or len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken("The Authorization header must be 'Bearer <token>'.")
    return token


def _verifier(config: AuthConfig) -> TokenVerifier | None:
    provider = config.provider_config
    if isinstance(provider, CustomAuthConfig):
        return CustomVerifier(provider, _Http())
    if provider is None:
        return None
    http = _Http(provider.verify_tls, str(provider.tls_cafile) if provider.tls_cafile else None)
    if provider.jwks is not None:
        return JwtVerifier(provider, JwksKeys(provider.jwks, http))
    assert provider.introspection is not None  # the config allows exactly one of the two
    return IntrospectionVerifier(provider, provider.introspection, http)


class Authenticator:
    """Who a request's bearer is, by ``server.auth``: an API key first, then the configured provider."""

    def __init__(self, config: AuthConfig, verifier: TokenVerifier | None = None) -> None:
        self._api_keys = {_digest(k.key.get_secret_value()): k.principal for k in config.api_keys}
        self._verifier = verifier if verifier is not None else _verifier(config)
        if config.route_policy or config.access_policy:
            logger.warning("server.auth route_policy/access_policy are not enforced: each principal sees its own")

    async def principal(self, scope: Scope) -> str:
        """The request's principal; AuthenticationError (401) or ServiceUnavailableError (503)."""
        try:
            token = bearer_token(scope)
            if token is None:
                raise AuthenticationError("Missing bearer token: send 'Authorization: Bearer <token>'.")
            principal = self._api_keys.get(_digest(token))
            if principal is not None:
                return principal
            if self._verifier is None:
                raise InvalidToken("Unknown API key.")
            return await self._verifier.verify(token, scope)
        except InvalidToken as exc:
            raise AuthenticationError(str(exc), code="invalid_api_key") from None
        except AuthUnavailable as exc:
            logger.warning("authentication unavailable on %s: %s", scope.get("path"), exc)
            raise ServiceUnavailableError(
                "The authentication service is unavailable; try again later.", code="auth_unavailable"
            ) from None

    async def close(self) -> None:
        """Close the connections to the authentication services."""
        if self._verifier is not None:
            await self._verifier.close()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class AuthMiddleware:
    """ASGI middleware: authenticate every HTTP request except ``public_paths``, then serve it as its principal."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, public_paths: Collection[str]) -> None:
        self.app, self.authenticator, self.public_paths = app, authenticator, frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        try:
            principal = await self.authenticator.principal(scope)
        except APIError as error:
            response = error_response(error)
            if isinstance(error, AuthenticationError):
                challenge = f'Bearer realm="{REALM}"' + (', error="invalid_token"' if error.code else "")
                response.headers["WWW-Authenticate"] = challenge
            await response(scope, receive, send)
            return
        with acting_as(principal):
            await self.app(scope, receive, send)

"""``server.auth``: who may call the server, in llama-stack's configuration language.

```yaml
server:
  auth:
    provider_config:              # llama-stack's block, unchanged
      type: oauth2_token
      issuer: https://idp.example.com/realms/acme
      audience: llama-batches
      jwks: {uri: https://idp.example.com/realms/acme/protocol/openid-connect/certs, key_recheck_period: 3600}
      claims_mapping: {sub: roles, email: principal}   # optional: the claim mapped to `principal` names the caller
    api_keys:                     # llama-batches' addition, for small deployments
    - {key: "${env.ALICE_API_KEY}", principal: alice}
```

``provider_config`` is one of ``oauth2_token`` (a JWT checked against a JWKS, or an opaque token checked by RFC 7662
introspection) and ``custom`` (an endpoint that answers who the bearer is). ``api_keys`` can be used alone or next
to ``provider_config``. ``route_policy`` and ``access_policy`` are accepted so a llama-stack config loads; they are
not enforced (every resource is visible to its owner only). Secrets are ``SecretStr``: never printed in a repr.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, FilePath, SecretStr, field_validator, model_validator

__all__ = [
    "MAX_PRINCIPAL_LENGTH",
    "PRINCIPAL_ATTRIBUTE",
    "ApiKey",
    "AuthConfig",
    "AuthProviderConfig",
    "CustomAuthConfig",
    "OAuth2IntrospectionConfig",
    "OAuth2JWKSConfig",
    "OAuth2TokenAuthConfig",
    "check_principal",
    "claim_value",
]

PRINCIPAL_ATTRIBUTE = "principal"
"""The attribute name that, as a value of ``claims_mapping``, names the claim holding the principal."""
MAX_PRINCIPAL_LENGTH = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_principal(value: object) -> str:
    """``value`` if it can name a principal: a non-empty string of at most 256 characters, no control character
    (a NUL inside a principal could make two (principal, idempotency key) scopes collide)."""
    if not isinstance(value, str) or not value or len(value) > MAX_PRINCIPAL_LENGTH or _CONTROL.search(value):
        raise ValueError(
            f"a principal is a string of 1 to {MAX_PRINCIPAL_LENGTH} characters without control characters"
        )
    return value


def claim_value(claims: dict[str, Any], path: str) -> Any:
    """The claim at ``path`` (``a.b`` is ``claims["a"]["b"]``, else the literal key ``"a.b"``), or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return claims.get(path)
        value = value[part]
    return value


class OAuth2JWKSConfig(BaseModel):
    """Where the token issuer publishes its public keys."""

    model_config = ConfigDict(extra="ignore")

    uri: str = Field(description="The JWKS URI of the issuer.")
    token: SecretStr | None = Field(default=None, description="Bearer token sent to the JWKS URI, if it needs one.")
    key_recheck_period: int = Field(
        default=3600, ge=1, description="Seconds after which the key set is fetched again (rotation)."
    )


class OAuth2IntrospectionConfig(BaseModel):
    """An RFC 7662 token introspection endpoint, and this server's client credentials for it."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field(description="The introspection endpoint.")
    client_id: str
    client_secret: SecretStr
    send_secret_in_body: bool = Field(
        default=False, description="Send client_id/client_secret in the form instead of HTTP Basic authentication."
    )


def _default_claims_mapping() -> dict[str, str]:
    return {
        "sub": "roles",
        "username": "roles",
        "groups": "teams",
        "team": "teams",
        "project": "projects",
        "tenant": "namespaces",
        "namespace": "namespaces",
    }


class OAuth2TokenAuthConfig(BaseModel):
    """OAuth2 bearer tokens: JWTs verified against ``jwks``, or opaque tokens checked by ``introspection``.

    The principal is the ``sub`` claim (``sub``, else ``username``, for introspection), unless ``claims_mapping``
    maps a claim (a dotted path for a nested one) to the attribute ``principal``."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["oauth2_token"] = "oauth2_token"
    audience: str = Field(default="llama-stack", description="The audience (aud) a JWT must carry.")
    verify_tls: bool = Field(default=True, description="Verify the TLS certificates of the JWKS/introspection host.")
    tls_cafile: FilePath | None = Field(default=None, description="CA bundle for that host.")
    issuer: str | None = Field(default=None, description="The issuer (iss) a JWT must carry; unchecked when unset.")
    claims_mapping: dict[str, str] = Field(default_factory=_default_claims_mapping)
    jwks: OAuth2JWKSConfig | None = None
    introspection: OAuth2IntrospectionConfig | None = None

    @field_validator("claims_mapping")
    @classmethod
    def _no_empty_attribute(cls, mapping: dict[str, str]) -> dict[str, str]:
        for claim, attribute in mapping.items():
            if not attribute:
                raise ValueError(f"claims_mapping value cannot be empty: {claim}")
        principal_claims = [claim for claim, attribute in mapping.items() if attribute == PRINCIPAL_ATTRIBUTE]
        if len(principal_claims) > 1:
            raise ValueError(f"only one claim can map to '{PRINCIPAL_ATTRIBUTE}', not {', '.join(principal_claims)}")
        return mapping

    @model_validator(mode="after")
    def _one_mode(self) -> Self:
        if (self.jwks is None) == (self.introspection is None):
            raise ValueError("configure exactly one of jwks or introspection")
        return self

    def principal_claim(self, default: str = "sub") -> str:
        """The claim that names the caller."""
        for claim, attribute in self.claims_mapping.items():
            if attribute == PRINCIPAL_ATTRIBUTE:
                return claim
        return default


class CustomAuthConfig(BaseModel):
    """An endpoint that answers who the bearer is. It receives ``POST {"api_key": <token>, "request": {"path",
    "headers", "params"}}`` (the Authorization and Cookie headers left out) and answers 200 ``{"principal": ...}``
    for a valid token; any other 4xx status refuses the token."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["custom"] = "custom"
    endpoint: str = Field(description="URL of the authentication endpoint.")


AuthProviderConfig = Annotated[OAuth2TokenAuthConfig | CustomAuthConfig, Field(discriminator="type")]


class ApiKey(BaseModel):
    """A static API key and the principal it authenticates."""

    model_config = ConfigDict(extra="forbid")

    key: SecretStr = Field(description="The key, as sent in 'Authorization: Bearer <key>' (use ${env.X}).")
    principal: str = Field(description="Who the key's bearer is.")

    @field_validator("principal")
    @classmethod
    def _usable_principal(cls, principal: str) -> str:
        return check_principal(principal)

    @field_validator("key")
    @classmethod
    def _long_enough(cls, key: SecretStr) -> SecretStr:
        if len(key.get_secret_value()) < 16:
            raise ValueError("an API key must have at least 16 characters")
        return key


class AuthConfig(BaseModel):
    """``server.auth``: llama-stack's ``AuthenticationConfig`` plus ``api_keys``."""

    model_config = ConfigDict(extra="allow")

    provider_config: AuthProviderConfig | None = None
    api_keys: list[ApiKey] = Field(default_factory=list)
    route_policy: list[Any] = Field(default_factory=list, description="Accepted, not enforced.")
    access_policy: list[Any] = Field(default_factory=list, description="Accepted, not enforced.")

    @field_validator("api_keys")
    @classmethod
    def _distinct_keys(cls, keys: list[ApiKey]) -> list[ApiKey]:
        if len({k.key.get_secret_value() for k in keys}) != len(keys):
            raise ValueError("the same API key is listed twice")
        return keys

    @property
    def enabled(self) -> bool:
        """Whether requests must authenticate (a provider or at least one API key is configured)."""
        return self.provider_config is not None or bool(self.api_keys)

"""The idempotency key of a create request: the ``Idempotency-Key`` header (an RFC 8941 sf-string, quoted, or a bare
token as Stripe-style clients send it) or the body's ``idempotency_key`` (alias ``idem_tok``)."""

from __future__ import annotations

from ..errors import InvalidRequestError
from ..idempotency import one_key

__all__ = ["parse_header", "resolve_key"]


def parse_header(value: str) -> str:
    """The key in an ``Idempotency-Key`` header value."""
    value = value.strip()
    if not value.startswith('"'):
        if any(c in value for c in '"\\,;') or not value:
            raise InvalidRequestError("Invalid Idempotency-Key header: expected a string.", param="Idempotency-Key")
        return value
    if len(value) < 2 or not value.endswith('"'):
        raise InvalidRequestError("Invalid Idempotency-Key header: unterminated string.", param="Idempotency-Key")
    key, escaped = [], False
    for char in value[1:-1]:
        if escaped:
            if char not in '"\\':
                raise InvalidRequestError("Invalid Idempotency-Key header: bad escape.", param="Idempotency-Key")
            key.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"' or not 0x20 <= ord(char) < 0x7F:
            raise InvalidRequestError("Invalid Idempotency-Key header: bad character.", param="Idempotency-Key")
        else:
            key.append(char)
    if escaped:
        raise InvalidRequestError("Invalid Idempotency-Key header: bad escape.", param="Idempotency-Key")
    return "".join(key)


def resolve_key(header: str | None, body_key: str | None, body_alias: str | None) -> str | None:
    """The one key of a request; keys given twice must agree (400 otherwise)."""
    body = one_key(body_key, body_alias)
    from_header = parse_header(header) if header is not None else None
    if from_header is not None and body is not None and from_header != body:
        raise InvalidRequestError(
            "The Idempotency-Key header and the body's idempotency_key differ.",
            code="invalid_value",
            param="idempotency_key",
        )
    return from_header if from_header is not None else body

"""The idempotency key of a create request: the ``Idempotency-Key`` header or the body's ``idempotency_key`` (alias
``idem_tok``).

The header is an RFC 8941 Item whose value is an sf-string (``"key"``, with ``\\"`` and ``\\\\`` escapes), as
draft-ietf-httpapi-idempotency-key-header says; parameters after it (``"key";x=1``) are parsed and ignored, as
RFC 8941 asks of parsers. Stripe-style clients send the key bare (``Idempotency-Key: key``), so a bare value is
taken whole. Either way the header is ASCII: an sf-string holds printable ASCII only, and the server reads header
bytes as latin-1, so a UTF-8 key in a header would arrive as other characters. A header with any byte outside
printable ASCII is a 400 that says so (a key with other characters goes in the body, which JSON carries exactly).

Header and body keys are compared after the same normalisation: each transport's own encoding is undone (the
header's quotes and escapes, the body's JSON) and nothing else; the key is then opaque (no trimming inside the key,
no case folding, no Unicode normalisation), and both must pass the same rules (:func:`~llama_batches.idempotency.
check_key`: 1 to 255 characters a store can hold). A key sent both ways must be the same string.
"""

from __future__ import annotations

import re

from ..errors import InvalidRequestError
from ..idempotency import check_key, one_key

__all__ = ["HEADER", "parse_header", "resolve_key"]

HEADER = "Idempotency-Key"

_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"'
_BARE_ITEM = "|".join(
    (
        _STRING,
        r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*",  # sf-token
        r"-?[0-9]{1,15}(?:\.[0-9]{1,3})?",  # sf-integer, sf-decimal
        r":[A-Za-z0-9+/=]*:",  # sf-binary
        r"\?[01]",  # sf-boolean
    )
)
_PARAMETERS = rf"(?:;\x20*[a-z*][a-z0-9_\-.*]*(?:=(?:{_BARE_ITEM}))?)*"
_ITEM = re.compile(rf"({_STRING}){_PARAMETERS}")
_ESCAPE = re.compile(r'\\(["\\])')
_BARE_KEY = re.compile(r'[^"\\,;]+')
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


def _invalid(message: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid {HEADER} header: {message}", code="invalid_value", param=HEADER)


def parse_header(value: str) -> str:
    """The key in one ``Idempotency-Key`` header value (as the server decoded it: latin-1); 400 naming the header
    when it is not ASCII or not an sf-string / bare key."""
    if not value.isascii():
        raise _invalid(
            "it must be ASCII (an RFC 8941 string holds printable ASCII only). "
            "Send a key with other characters as the body's idempotency_key."
        )
    value = value.strip(" \t")
    if _PRINTABLE.fullmatch(value) is None:
        raise _invalid("it holds a control character; a key is printable ASCII.")
    if value.startswith('"'):
        item = _ITEM.fullmatch(value)
        if item is None:
            raise _invalid('expected a string: "key", with \\" and \\\\ escaping a quote and a backslash.')
        return _ESCAPE.sub(r"\1", item.group(1)[1:-1])
    if _BARE_KEY.fullmatch(value) is None:
        raise _invalid('expected a string: "key" quoted, or a bare key without ", \\, comma or semicolon.')
    return value


def resolve_key(headers: list[str], body_key: str | None, body_alias: str | None) -> str | None:
    """The one key of a request, from its ``Idempotency-Key`` header values and body fields; each must be a valid
    key, and keys given twice must agree (400 otherwise)."""
    if len(headers) > 1:
        raise _invalid(f"send one, not {len(headers)}.")
    body = one_key(body_key, body_alias)
    if body is not None:
        check_key(body, "idempotency_key" if body_key is not None else "idem_tok")
    from_header = check_key(parse_header(headers[0]), HEADER) if headers else None
    if from_header is not None and body is not None and from_header != body:
        raise InvalidRequestError(
            "The Idempotency-Key header and the body's idempotency_key differ.",
            code="invalid_value",
            param="idempotency_key",
        )
    return from_header if from_header is not None else body

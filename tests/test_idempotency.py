"""The idempotency service every batches provider uses (:mod:`llama_batches.idempotency`)."""

from __future__ import annotations

import pytest

from llama_batches.errors import ConflictError, InvalidRequestError
from llama_batches.idempotency import IdempotentCreate, fingerprint

PARAMS = {"input_file_id": "file-1", "endpoint": "/v1/chat/completions", "metadata": {"a": "1", "b": "2"}}


def test_the_same_parameters_in_any_key_order_are_a_replay() -> None:
    first = IdempotentCreate.of("alice", "nightly", PARAMS)
    again = IdempotentCreate.of("alice", "nightly", {**PARAMS, "metadata": {"b": "2", "a": "1"}})
    assert first == again
    again.check(first.fingerprint, "batch_x")  # no error: a replay


def test_other_parameters_are_the_409_naming_the_key_and_what_it_made() -> None:
    first = IdempotentCreate.of("alice", "nightly", PARAMS)
    other = IdempotentCreate.of("alice", "nightly", {**PARAMS, "metadata": None})
    with pytest.raises(ConflictError) as made:
        other.check(first.fingerprint, "batch_x")
    assert "'nightly'" in made.value.message and "batch_x" in made.value.message
    assert (made.value.code, made.value.param) == ("idempotency_key_reused", "idempotency_key")
    with pytest.raises(ConflictError) as unknown:
        other.check(first.fingerprint)
    assert "batch" not in unknown.value.message.split("used")[1].split("with")[0]


def test_scopes_differ_by_principal_and_none_differs_from_empty() -> None:
    assert IdempotentCreate.of("alice", "k", PARAMS).scope != IdempotentCreate.of("bob", "k", PARAMS).scope
    assert fingerprint({"metadata": None}) != fingerprint({"metadata": {}})


@pytest.mark.parametrize("key", ["", "x" * 256, "a\x00b", "\ud800"])
def test_a_key_no_store_can_hold_is_a_400_naming_it(key: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        IdempotentCreate.of("alice", key, PARAMS)
    assert refused.value.param == "idempotency_key"

"""A backend's answer is untrusted input: whatever it sends, each request ends as exactly one valid output or error
line. Properties over the line builders with arbitrary answers, then the real ``remote::openai`` provider against
the fake backend in scripted mode over real HTTP, through the executor (drops, any status, headers and bytes)."""

from __future__ import annotations

import asyncio
import itertools
import json
import string
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llama_batches.api import Endpoint, RawResponse
from llama_batches.storage import RequestResult
from llama_batches_openai.config import OpenAIConfig
from llama_batches_openai.inference import OpenAICompatInference
from llama_batches_reference.config import ReferenceBatchesImplConfig
from llama_batches_reference.executor import RequestExecutor
from llama_batches_reference.output import MAX_USAGE_TOKENS, error_result, expired_line, response_result
from llama_batches_reference.validation import ParsedLine

from .fake_backend import FakeBackend, Scripted
from .test_reference_retries import ScriptedInference, executor

SEPARATORS = (b"\n", b"\r", "\u2028".encode(), "\u2029".encode(), "\x85".encode())
USAGE_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
)


def check_line(result: RequestResult | bytes, custom_id: str | None = None) -> dict[str, Any]:
    """The line, after checking it is one line of JSON in OpenAI's shape that both orjson and json read alike."""
    output = result.output if isinstance(result, RequestResult) else result
    assert not any(separator in output for separator in SEPARATORS), output
    text = output.decode("utf-8")
    assert len(text.splitlines()) == 1
    line = orjson.loads(output)
    assert isinstance(line, dict) and isinstance(json.loads(text), dict)
    assert set(line) == {"id", "custom_id", "response", "error"}
    assert isinstance(line["id"], str) and line["id"].startswith("batch_req_")
    if custom_id is not None and custom_id.encode("utf-8", "surrogatepass").decode("utf-8", "replace") == custom_id:
        assert line["custom_id"] == custom_id
    if line["response"] is None:
        error = line["error"]
        assert set(error) == {"code", "message"} and all(isinstance(v, str) for v in error.values())
        assert len(error["message"]) <= 1100 and 1 <= len(error["code"]) <= 64 and error["code"].isascii()
        assert not isinstance(result, RequestResult) or not result.ok
        return line
    response = line["response"]
    assert set(response) == {"status_code", "request_id", "body"}
    ok = 200 <= response["status_code"] < 300 and line["error"] is None
    if not ok:  # a failure says why twice: in the body (OpenAI's clients) and in `error` (llama-stack's)
        error = line["error"]
        assert set(error) == {"code", "message"} and all(isinstance(v, str) and v for v in error.values())
        assert len(error["message"]) <= 1100 and len(error["code"]) <= 64 and error["code"].isascii()
    assert not isinstance(result, RequestResult) or result.ok == ok
    assert type(response["status_code"]) is int and isinstance(response["body"], dict)
    request_id = response["request_id"]
    assert isinstance(request_id, str) and 1 <= len(request_id) <= 128
    assert request_id.isascii() and request_id.isprintable()
    if isinstance(result, RequestResult):
        tokens = (result.input_tokens, result.output_tokens, result.cached_tokens, result.reasoning_tokens)
        assert all(type(t) is int and 0 <= t <= MAX_USAGE_TOKENS for t in tokens)
    return line


# strategies ------------------------------------------------------------------------------------------------------

TRICKY = "\x00\n\r\t\u2028\u2029\x85\"\\'\x7f\ufeff"
INT64 = st.integers(-(2**63), 2**64 - 1)  # what orjson writes; bigger ones are read as floats (see big_numbers)
texts = st.text(st.characters(exclude_categories=["Cs"]) | st.sampled_from(TRICKY), max_size=40)
any_texts = st.text(st.characters(exclude_categories=()) | st.sampled_from(TRICKY), max_size=40)  # surrogates too
scalars = st.none() | st.booleans() | INT64 | st.floats(allow_nan=False, allow_infinity=False) | texts
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4), max_leaves=12
)
counts = st.integers(-5, 2 * MAX_USAGE_TOKENS) | scalars | json_values
usages = st.dictionaries(st.sampled_from(USAGE_FIELDS), counts | st.dictionaries(texts, counts, max_size=3), max_size=5)
details = st.fixed_dictionaries({}, optional={"cached_tokens": counts, "reasoning_tokens": counts})
usages = usages | st.fixed_dictionaries(
    {}, optional={"prompt_tokens": counts, "prompt_tokens_details": details, "completion_tokens_details": details}
)
objects = st.dictionaries(texts, json_values, max_size=4).flatmap(
    lambda obj: (
        st.just(obj) | usages.map(lambda usage: {**obj, "usage": usage}) | json_values.map(lambda u: {"usage": u})
    )
)


def _dumped(value: Any, style: str) -> bytes:
    if style == "compact":
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    if style == "python":
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if style == "ascii":
        return json.dumps(value).encode()
    pretty = json.dumps(value, ensure_ascii=False, indent=2).encode("utf-8", "surrogatepass")
    return {"pretty": pretty, "crlf": pretty.replace(b"\n", b"\r\n"), "padded": b"\n  " + pretty + b"\r\n"}[style]


styles = st.sampled_from(["compact", "python", "ascii", "pretty", "crlf", "padded"])
object_bodies = st.tuples(objects, styles).map(lambda v: _dumped(*v))
bodies = st.one_of(
    object_bodies,  # first, as hypothesis draws the first alternatives more often
    st.binary(max_size=300),
    st.tuples(json_values, styles).map(lambda v: _dumped(*v)),
    st.tuples(objects, styles).map(lambda v: _dumped(*v)[:-1]),  # cut short
    st.integers(min_value=2**64).map(lambda n: b'{"usage": {"prompt_tokens": %d, "completion_tokens": 1}}' % n),
    st.tuples(objects, st.sampled_from(["python", "pretty"])).map(
        lambda v: _dumped(*v).replace(b"{", b'{"\xed\xa0\x80":0,', 1)
    ),
)
request_ids = any_texts | st.text(string.printable, max_size=300) | st.sampled_from(["req_1", "", " ", "a" * 129])
headers = st.dictionaries(texts, texts, max_size=3).flatmap(
    lambda extra: st.fixed_dictionaries({}, optional={"x-request-id": request_ids}).map(lambda h: {**extra, **h})
)


def _object(body: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _expected_usage(payload: dict[str, Any]) -> tuple[int, int, int, int]:
    def sane(value: object) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10**9 else 0

    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return 0, 0, 0, 0
    prompt_details, completion_details = usage.get("prompt_tokens_details"), usage.get("completion_tokens_details")
    cached = prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else 0
    reasoning = completion_details.get("reasoning_tokens") if isinstance(completion_details, dict) else 0
    return sane(usage.get("prompt_tokens")), sane(usage.get("completion_tokens")), sane(cached), sane(reasoning)


# the builders ------------------------------------------------------------------------------------------------------


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(status=st.integers(200, 299) | st.integers(100, 599), headers=headers, body=bodies, custom_id=any_texts)
def test_any_answer_is_one_valid_line(status: int, headers: dict[str, str], body: bytes, custom_id: str) -> None:
    result = response_result("batch_1", 3, custom_id, RawResponse(status, body, headers))
    line = check_line(result, custom_id)
    payload = _object(body)
    event("success" if result.ok else "failure, JSON object kept" if payload is not None else "failure, body replaced")
    assert result.ok == (200 <= status < 300 and payload is not None)
    assert line["response"]["status_code"] == status and (result.line, result.custom_id) == (3, custom_id)
    request_id = headers.get("x-request-id")
    if request_id and len(request_id) <= 128 and request_id.isascii() and request_id.isprintable():
        assert line["response"]["request_id"] == request_id
    if payload is not None:
        assert line["response"]["body"] == payload  # spliced or re-serialised, the same object
    else:
        error = line["response"]["body"]["error"]
        assert error["code"] == ("invalid_response" if 200 <= status < 300 else "http_error")
        assert error["type"] == "upstream_error" and len(error["message"]) < 400
    tokens = (result.input_tokens, result.output_tokens, result.cached_tokens, result.reasoning_tokens)
    assert tokens == (_expected_usage(payload) if result.ok and payload is not None else (0, 0, 0, 0))


@settings(max_examples=2000, deadline=None)
@given(custom_id=any_texts, code=any_texts, message=any_texts | st.text(max_size=5000))
def test_any_error_is_one_valid_line(custom_id: str, code: str, message: str) -> None:
    line = check_line(error_result("batch_1", 1, custom_id, code, message), custom_id)
    assert line["response"] is None
    assert check_line(expired_line(custom_id), custom_id)["error"]["code"] == "batch_expired"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(status=st.integers(100, 599), headers=headers, body=bodies, custom_id=any_texts)
def test_a_body_as_string_holds_the_same_object_in_one_valid_line(
    status: int, headers: dict[str, str], body: bytes, custom_id: str
) -> None:
    """``response_body: json_string`` (llama-stack's shape): the body is a string whose JSON is what the object
    shape would hold, and nothing else of the line changes."""
    as_object = check_line(response_result("batch_1", 3, custom_id, RawResponse(status, body, headers)), custom_id)
    result = response_result("batch_1", 3, custom_id, RawResponse(status, body, headers), body_as_string=True)
    assert result.output.find(b"\n") < 0 and result.output.find(b"\r") < 0
    line = orjson.loads(result.output)
    assert line["custom_id"] == as_object["custom_id"] and isinstance(line["response"]["body"], str)
    assert orjson.loads(line["response"]["body"]) == as_object["response"]["body"]
    assert line["response"]["status_code"] == as_object["response"]["status_code"] == status
    assert line["error"] == as_object["error"] and result.ok == (200 <= status < 300 and _object(body) is not None)


def test_a_one_line_body_is_spliced_and_a_multiline_one_compacted() -> None:
    body = '{"a": "x\u2028y", "usage": {"prompt_tokens": 2, "completion_tokens": true}}'.encode()
    spliced = response_result("b", 1, "c", RawResponse(200, body + b"\n"))
    assert b'{"a": "x\\u2028y", "usage": {"prompt_tokens": 2, "completion_tokens": true}}' in spliced.output
    assert (spliced.input_tokens, spliced.output_tokens) == (2, 0)
    pretty = response_result("b", 1, "c", RawResponse(200, b'{\r\n  "a": [1,\n 2]\n}'))
    assert b'"body":{"a":[1,2]}' in pretty.output and pretty.ok
    deep = b"[" * 600 + b"]" * 600  # deeper than orjson writes: its line breaks are dropped instead
    nested = response_result("b", 1, "c", RawResponse(200, b'{"a":\n' + deep + b"}"))
    assert check_line(nested)["response"]["body"]["a"] is not None and nested.ok


def test_a_bad_request_id_is_cut_and_cleaned() -> None:
    long_id = response_result("b", 1, "c", RawResponse(200, b"{}", {"x-request-id": "r" * 5000}))
    assert check_line(long_id)["response"]["request_id"] == "r" * 128
    dirty = response_result("b", 1, "c", RawResponse(200, b"{}", {"x-request-id": "\x00r\u2028é\udcff1\n"}))
    assert check_line(dirty)["response"]["request_id"] == "r1"
    empty = response_result("b", 1, "c", RawResponse(200, b"{}", {"x-request-id": "\x00"}))
    assert check_line(empty)["response"]["request_id"].startswith("req_")


# the executor ------------------------------------------------------------------------------------------------------

LINE = ParsedLine(1, "c-1", "m", {"model": "m", "messages": []})


async def test_an_unexpected_exception_is_an_internal_error_line() -> None:
    run, inference, _ = executor([ValueError("bad \x00 thing " * 500)])
    result = await run.execute("batch_1", Endpoint.chat_completions, LINE)
    error = check_line(result, "c-1")["error"]
    assert error["code"] == "internal_error" and error["message"].startswith("The batch engine failed")
    assert "ValueError: bad \\x00 thing" in error["message"] and len(error["message"]) < 400
    assert "Traceback" not in error["message"] and inference.calls == 1


async def test_a_broken_exception_and_an_unencodable_line_still_give_a_line() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    run, _, _ = executor([Broken()])
    assert check_line(await run.execute("b", Endpoint.chat_completions, LINE))["error"]["message"] == "Broken"
    run, _, _ = executor([])
    unencodable = ParsedLine(2, "c", "m", {"model": "m", "x": 2**70})  # orjson cannot write it
    assert check_line(await run.execute("b", Endpoint.chat_completions, unencodable))["error"]["code"] == (
        "internal_error"
    )


class Cancelled(ScriptedInference):
    async def raw_request(self, endpoint: Endpoint, model: str, body: bytes) -> RawResponse:
        raise asyncio.CancelledError


async def test_cancellation_is_the_one_exception_that_escapes() -> None:
    run = RequestExecutor(Cancelled([]), _settings())
    with pytest.raises(asyncio.CancelledError):
        await run.execute("batch_1", Endpoint.chat_completions, LINE)


# over real HTTP ----------------------------------------------------------------------------------------------------

CAP = 4096
MAX_ATTEMPTS = 2
FRAMING = {"content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive", "upgrade", "trailer"}
header_names = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=16).filter(
    lambda name: name.lower() not in FRAMING
)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"), max_size=60)
wire_headers = st.dictionaries(header_names, header_values, max_size=3) | st.fixed_dictionaries(
    {}, optional={"x-request-id": header_values, "retry-after": header_values, "retry-after-ms": header_values}
)
answers = st.builds(
    Scripted,
    status=st.integers(200, 299) | st.integers(200, 599),
    body=bodies | st.binary(min_size=CAP - 10, max_size=CAP + 10),
    headers=wire_headers,
    content_type=st.sampled_from([None, "application/json", "text/html", "application/json; charset=latin-1"]),
    drop=st.sampled_from([False, False, False, True]),
    chunked=st.booleans(),
)


def _settings(**config: Any) -> ReferenceBatchesImplConfig:
    base = {"kvstore": {"backend": "b"}, "max_attempts": MAX_ATTEMPTS}
    return ReferenceBatchesImplConfig.model_validate(base | {"retry_initial_delay_s": 0.001} | config)


def _expected(plan: list[Scripted]) -> tuple[int, Scripted]:
    """How many attempts the executor makes, and the answer it ends with."""
    for attempt, answer in enumerate(plan[:MAX_ATTEMPTS] + plan[-1:] * MAX_ATTEMPTS, start=1):
        retryable = answer.drop or answer.status in (408, 429) or answer.status >= 500
        if attempt == MAX_ATTEMPTS or not retryable or _too_large(answer):
            return attempt, answer
    raise AssertionError("unreachable")


def _too_large(answer: Scripted) -> bool:
    return not answer.drop and len(answer.body) > CAP and answer.status not in (204, 304)  # those have no body


def test_the_openai_provider_turns_any_http_answer_into_one_line() -> None:
    with asyncio.Runner() as runner:
        backend = FakeBackend()
        runner.run(backend.start())
        config = OpenAIConfig(base_url=backend.base_url, max_response_bytes=CAP, timeout_s=10)
        impl = OpenAICompatInference(config)
        run = RequestExecutor(impl, _settings(retry_max_delay_s=0.01))
        plans: dict[str, list[Scripted]] = {}

        def script(path: str, body: Any, attempt: int) -> Scripted:
            plan = plans[body["messages"][-1]["content"]]
            return plan[min(attempt, len(plan)) - 1]

        backend.script = script
        numbers, kinds = itertools.count(1), Counter[str]()

        @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(plan=st.lists(answers, min_size=1, max_size=MAX_ATTEMPTS))
        def check(plan: list[Scripted]) -> None:
            content = f"request {next(numbers)}"
            plans[content] = plan
            body = {"model": "fake-model", "messages": [{"role": "user", "content": content}]}
            result = runner.run(run.execute("batch_1", Endpoint.chat_completions, ParsedLine(1, "c", "m", body)))
            line = check_line(result, "c")
            attempts, last = _expected(plan)
            assert backend.seen[content] == attempts
            if last.drop:
                kinds["dropped"] += 1
                assert line["error"]["code"] == "service_unavailable"
            elif _too_large(last):
                kinds["too large"] += 1
                assert line["error"]["code"] == "response_too_large"
            else:
                kinds["success" if result.ok else "failure"] += 1
                assert line["response"]["status_code"] == last.status
                assert result.ok == (last.status < 300 and last.status != 204 and _object(last.body) is not None)

        try:
            check()
            assert sum(kinds.values()) > 150 and len(kinds) == 4, kinds  # every kind of ending was seen
        finally:
            runner.run(impl.shutdown())
            runner.run(backend.stop())


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_answer_over_the_size_cap_is_an_error_line_not_retried(chunked: bool) -> None:
    sizes = {"big": orjson.dumps({"data": "x" * 2000}), "fits": orjson.dumps({"data": "x" * 1999})}
    cap = len(sizes["fits"])
    async with FakeBackend() as backend:
        impl = OpenAICompatInference(OpenAIConfig(base_url=backend.base_url, max_response_bytes=cap))
        run = RequestExecutor(impl, _settings(max_attempts=3))
        backend.script = lambda path, body, attempt: Scripted(
            200, sizes[body["messages"][-1]["content"]], chunked=chunked
        )
        try:
            lines = [
                await run.execute("b", Endpoint.chat_completions, ParsedLine(n, content, "m", _chat(content)))
                for n, content in enumerate(["big", "fits", "big", "fits"])
            ]
        finally:
            await impl.shutdown()
    too_large = check_line(lines[0], "big")["error"]
    assert too_large["code"] == "response_too_large" and f"limit of {cap} bytes" in too_large["message"]
    assert [line.ok for line in lines] == [False, True, False, True]  # the pool recovers after a cut answer
    assert backend.seen == {"big": 2, "fits": 2}  # once per request: never retried


def _chat(content: str) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": content}]}


async def test_a_dropped_connection_is_retried_then_an_error_line() -> None:
    async with FakeBackend() as backend:
        impl = OpenAICompatInference(OpenAIConfig(base_url=backend.base_url))
        run = RequestExecutor(impl, _settings(max_attempts=3))
        backend.script = lambda path, body, attempt: Scripted(drop=True) if attempt < 3 else None
        try:
            recovered = await run.execute("b", Endpoint.chat_completions, ParsedLine(1, "c", "m", _chat("hi")))
            backend.script = lambda path, body, attempt: Scripted(drop=True)
            lost = await run.execute("b", Endpoint.chat_completions, ParsedLine(2, "d", "m", _chat("lost")))
        finally:
            await impl.shutdown()
    assert recovered.ok and orjson.loads(recovered.output)["response"]["body"]["choices"]
    assert check_line(lost, "d")["error"]["code"] == "service_unavailable"
    assert backend.seen == {"hi": 3, "lost": 3}

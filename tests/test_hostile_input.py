"""Hostile input over the wire: a raw gRPC client against a real peer process.

The peer is the session's node-b (`tests/peer_app.py` in another process). Requests
are built by hand, byte for byte: the protobuf shell (`0a`, varint length, payload)
and the postcard payloads of docs/wire.md, then emptied, truncated, randomised, given
wrong types, newer versions, invalid UTF-8, bad JSON and lengths no message can
hold. Each answer's status code is checked, and that its message says what was
wrong; after every test a normal `PeerClient` call must still succeed on the same
peer, and the peer process must still be alive.

Status codes expected here:
- INVALID_ARGUMENT: empty payload, unreadable version varint, a payload that does
  not decode (truncated, wrong types, invalid UTF-8, huge lengths), input_json that
  is not UTF-8 JSON or nests too deeply.
- FAILED_PRECONDITION: an envelope version newer than 1, with docs/wire.md's message.
- INTERNAL: the protobuf shell itself does not decode (tonic's mapping, which is the
  one gRPC's status-code guide gives for an unparseable request message).
- For random bytes, an independent decoder below (`expected_outcome`) predicts the
  code; inputs that happen to decode get the normal answer (OK / NOT_FOUND).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped,unused-ignore]
import pytest
from blazen_peer import PeerClient
from conftest import PeerProcess

SERVICE = "/blazen.peer.v1.BlazenPeer/"
INVOKE = "InvokeSubWorkflow"
DEREF = "DerefSessionRef"
CHUNKS = "DerefSessionRefChunks"
RELEASE = "ReleaseSessionRef"
FINISH = "FinishParentRun"
RENEW = "RenewParentLease"
STREAM_EVENTS = "StreamSubWorkflowEvents"
STREAMING = frozenset({CHUNKS, STREAM_EVENTS})
REF_METHODS = (DEREF, CHUNKS, RELEASE, FINISH, RENEW)
"""Methods whose payload is `{envelope_version: u32, uuid}`."""
RUN_METHODS = frozenset({INVOKE, STREAM_EVENTS})
"""Methods whose payload is a `SubWorkflowRequest`."""
ALL_METHODS = (INVOKE, STREAM_EVENTS, *REF_METHODS)
PAYLOAD_TYPE = {
    INVOKE: "SubWorkflowRequest",
    STREAM_EVENTS: "SubWorkflowRequest",
    DEREF: "DerefRequest",
    CHUNKS: "DerefRequest",
    RELEASE: "DerefRequest",  # ReleaseRequest is an alias of DerefRequest
    FINISH: "ParentRunRequest",
    RENEW: "ParentRunRequest",
}

OK = "OK"
INVALID = "INVALID_ARGUMENT"
PRECONDITION = "FAILED_PRECONDITION"
NOT_FOUND = "NOT_FOUND"
INTERNAL = "INTERNAL"
CALL_TIMEOUT_SECS = 20.0
RANDOM_CASES_PER_FLAVOUR = 128
SEED = 20_261_121

WORKFLOW = "hostile-input"
ECHO = "test::echo"
REF_UUID = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0").bytes
"""A ref no test creates: a valid DerefRequest for it is NOT_FOUND."""


# --- encoding by hand ---


def varint(value: int) -> bytes:
    """Unsigned LEB128, as postcard and protobuf write it."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def prefixed(raw: bytes) -> bytes:
    """A postcard String / bytes: varint length, then the bytes."""
    return varint(len(raw)) + raw


def wrap(payload: bytes) -> bytes:
    """`PostcardRequest { bytes postcard_payload = 1; }`: tag 0x0a, length, bytes."""
    return b"\x0a" + prefixed(payload)


def invoke_payload(
    *,
    version: bytes = b"\x01",
    name: bytes = WORKFLOW.encode(),
    steps: Sequence[bytes] = (ECHO.encode(),),
    input_json: bytes = b'{"x":1}',
    timeout: bytes = b"\x01\x1e",
) -> bytes:
    """SubWorkflowRequest{version, name, steps, input_json, timeout} (timeout pre-encoded)."""
    return (
        version
        + prefixed(name)
        + varint(len(steps))
        + b"".join(prefixed(step) for step in steps)
        + prefixed(input_json)
        + timeout
    )


def ref_payload(uuid_field: bytes = prefixed(REF_UUID), *, version: bytes = b"\x01") -> bytes:
    """DerefRequest / ReleaseRequest / ParentRunRequest: version, then the uuid field."""
    return version + uuid_field


def valid_payload(method: str) -> bytes:
    return invoke_payload() if method in RUN_METHODS else ref_payload()


# docs/wire.md's test vectors: `SubWorkflowRequest{1, "wf", ["a::b"], {"x":1}, Some(30)}`
# and `DerefRequest{1, 12345678-9abc-def0-1234-56789abcdef0}`.
WIRE_VECTOR = bytes.fromhex("01 02 77 66 01 04 61 3a 3a 62 07 7b 22 78 22 3a 31 7d 01 1e")
WIRE_DEREF_VECTOR = bytes.fromhex("01 10 12 34 56 78 9a bc de f0 12 34 56 78 9a bc de f0")

HUGE_LENGTHS = {
    "u32-max": varint(2**32 - 1),
    "4GiB": varint(2**32),
    "2^62": varint(2**62),
    "u64-max": varint(2**64 - 1),
}


# --- calls and outcomes ---


@dataclass(frozen=True)
class Outcome:
    code: str
    message: str


@dataclass(frozen=True)
class Expect:
    """An expected status: its code, and text its message must contain."""

    codes: frozenset[str]
    says: tuple[str, ...] = ()
    exact: str | None = None

    @staticmethod
    def of(code: str, *says: str, exact: str | None = None) -> Expect:
        return Expect(frozenset({code}), tuple(says), exact)

    def mismatch(self, outcome: Outcome) -> str | None:
        """Why `outcome` does not meet this expectation, or None if it does."""
        if outcome.code not in self.codes:
            return f"expected {sorted(self.codes)}, got {outcome.code}: {outcome.message!r}"
        if outcome.code == OK:
            return None
        if not outcome.message.strip():
            return f"{outcome.code} with an empty message"
        if self.exact is not None and outcome.message != self.exact:
            return f"message {outcome.message!r} is not {self.exact!r}"
        lower = outcome.message.lower()
        missing = [text for text in self.says if text.lower() not in lower]
        if missing:
            return f"message {outcome.message!r} does not mention {missing}"
        return None


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    request: bytes
    """The whole gRPC request message (protobuf shell included)."""
    expect: Expect

    def __str__(self) -> str:
        return self.id


def _metadata() -> list[tuple[str, str]]:
    token = os.environ.get("BLAZEN_PEER_TOKEN")
    return [("authorization", f"Bearer {token}")] if token else []


def raw_call(channel: Any, method: str, request: bytes) -> Outcome:
    """Sends `request` bytes as-is; a streaming reply is read to its end."""
    path = SERVICE + method
    try:
        if method in STREAMING:
            stream = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            for _ in stream(request, timeout=CALL_TIMEOUT_SECS, metadata=_metadata()):
                pass
        else:
            unary = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            unary(request, timeout=CALL_TIMEOUT_SECS, metadata=_metadata())
    except grpc.RpcError as err:
        return Outcome(str(err.code().name), str(err.details() or ""))
    return Outcome(OK, "")


def run_cases(channel: Any, cases: Sequence[Case]) -> list[str]:
    """Sends every case; returns one line per case whose answer was not the expected one."""
    failures = []
    for case in cases:
        outcome = raw_call(channel, case.method, case.request)
        problem = case.expect.mismatch(outcome)
        if problem is not None:
            failures.append(f"{case.id} ({case.request[:48].hex(' ')}): {problem}")
    return failures


async def check_cases(
    channel: Any, client: PeerClient, peer_process: PeerProcess, cases: Sequence[Case]
) -> None:
    """Runs the cases off the event loop, then checks the peer still serves normal calls."""
    failures = await asyncio.to_thread(run_cases, channel, cases)
    await assert_peer_still_serves(client, peer_process)
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(
        failures[:20]
    )


async def assert_peer_still_serves(client: PeerClient, peer_process: PeerProcess) -> None:
    peer_process.check_alive()
    marker = {"still": "serving", "nonce": uuid.uuid4().hex}
    result = await client.run_remote_workflow(WORKFLOW, [ECHO], marker, timeout_secs=30)
    assert result["data"] == marker
    assert result["node_id"] == "node-b"
    peer_process.check_alive()


@pytest.fixture(scope="module")
def channel(peer_process: PeerProcess) -> Iterator[Any]:
    """A plain gRPC channel to the session's peer; requests and replies are raw bytes."""
    with grpc.insecure_channel(peer_process.host_port) as opened:
        yield opened


def undecodable(method: str) -> Expect:
    return Expect.of(INVALID, "payload", f"does not decode as {PAYLOAD_TYPE[method]}")


def newer(version: int) -> Expect:
    return Expect.of(PRECONDITION, exact=f"envelope version {version} is newer than supported 1")


def normal_answer(method: str) -> Expect:
    """What the untouched valid request gets: the echo runs; the ref is unknown."""
    if method in RUN_METHODS:
        return Expect.of(OK)
    if method in (DEREF, CHUNKS):
        return Expect.of(NOT_FOUND, "not found")
    return Expect.of(OK)  # release of an unknown ref; finish / renew of an unknown parent


def by_method(
    make: Callable[[str], list[Case]], methods: Sequence[str] = ALL_METHODS
) -> pytest.MarkDecorator:
    """Parametrizes a test over `methods`, each yielding a list of cases."""
    return pytest.mark.parametrize("cases", [make(method) for method in methods], ids=methods)


def one_per_case(cases: list[Case]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("case", cases, ids=str)


# --- an independent decoder, to predict the answer to arbitrary bytes ---


class Undecodable(Exception):
    pass


@dataclass
class Reader:
    """postcard's reading rules: varints of at most ceil(bits/7) bytes whose last
    byte may only hold the remaining bits (over-long encodings are accepted)."""

    data: bytes
    pos: int = 0

    def take(self, count: int) -> bytes:
        if count > len(self.data) - self.pos:
            raise Undecodable("unexpected end")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def varint(self, bits: int) -> int:
        max_len = -(-bits // 7)
        last_max = (1 << (bits % 7)) - 1
        out = 0
        for i in range(max_len):
            byte = self.take(1)[0]
            out |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if i == max_len - 1 and byte > last_max:
                    raise Undecodable("varint overflows")
                return out
        raise Undecodable("varint does not terminate")

    def raw(self) -> bytes:
        return self.take(self.varint(64))

    def text(self) -> str:
        try:
            return self.raw().decode("utf-8")
        except UnicodeDecodeError as err:
            raise Undecodable("invalid utf-8") from err

    def option(self) -> bool:
        tag = self.take(1)[0]
        if tag > 1:
            raise Undecodable("bad option tag")
        return tag == 1

    def uuid(self) -> bytes:
        raw = self.raw()
        if len(raw) != 16:
            raise Undecodable("uuid is not 16 bytes")
        return raw


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def is_json(raw: bytes) -> bool:
    """Strict UTF-8 JSON text (no NaN / Infinity, no BOM, nothing after the value)."""
    try:
        json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return True


def expected_outcome(method: str, payload: bytes) -> Expect:
    """The answer docs/wire.md prescribes for `payload` sent to `method`."""
    if not payload:
        return Expect.of(INVALID, "empty payload")
    reader = Reader(payload)
    try:
        version = reader.varint(32)
    except Undecodable:
        return Expect.of(INVALID, "envelope version")
    if version > 1:
        return newer(version)
    try:
        if method in RUN_METHODS:
            reader.text()
            steps = [reader.text() for _ in range(reader.varint(64))]
            input_json = reader.raw()
            if reader.option():
                reader.varint(64)
        else:
            reader.uuid()
    except Undecodable:
        return undecodable(method)
    if method in RUN_METHODS:
        if not is_json(input_json):
            return Expect.of(INVALID, "input_json")
        if steps and all(step == ECHO for step in steps):
            return Expect.of(OK)
        # Unknown steps or workflow; a mutated timeout may also end the run early.
        return Expect(frozenset({OK, NOT_FOUND}))
    return normal_answer(method)


def test_the_hand_encoding_gives_the_wire_md_vectors() -> None:
    assert invoke_payload(name=b"wf", steps=[b"a::b"]) == WIRE_VECTOR
    assert ref_payload() == WIRE_DEREF_VECTOR
    assert wrap(b"\x01\x01") == b"\x0a\x02\x01\x01"
    assert varint(300) == b"\xac\x02"
    assert len(wrap(b"x" * 300)) == 1 + 2 + 300


def test_the_reference_decoder_agrees_with_the_wire_vectors() -> None:
    assert expected_outcome(INVOKE, WIRE_VECTOR).codes == {OK, NOT_FOUND}
    assert expected_outcome(INVOKE, invoke_payload()) == Expect.of(OK)
    assert expected_outcome(DEREF, ref_payload()) == Expect.of(NOT_FOUND, "not found")
    for cut in range(len(WIRE_VECTOR)):
        assert expected_outcome(INVOKE, WIRE_VECTOR[:cut]).codes == {INVALID}
    assert expected_outcome(RELEASE, b"\x02") == newer(2)
    assert expected_outcome(RELEASE, varint(2**32)) == Expect.of(INVALID, "envelope version")
    assert Reader(bytes.fromhex("ff ff ff ff 0f")).varint(32) == 2**32 - 1
    assert Reader(bytes.fromhex("81 00")).varint(32) == 1  # over-long, accepted
    with pytest.raises(Undecodable):
        Reader(bytes.fromhex("ff ff ff ff 1f")).varint(32)
    assert not is_json(b'"\xff"')
    assert not is_json(b"NaN")
    assert is_json(b' [1, {"a": null}] ')


# --- controls: the hand-built requests are right ---


@pytest.mark.parametrize("method", ALL_METHODS)
async def test_the_untouched_valid_request_gets_the_normal_answer(
    channel: Any, client: PeerClient, peer_process: PeerProcess, method: str
) -> None:
    case = Case(f"{method}-valid", method, wrap(valid_payload(method)), normal_answer(method))
    await check_cases(channel, client, peer_process, [case])


async def test_a_valid_request_with_a_huge_timeout_runs_normally(
    channel: Any, client: PeerClient, peer_process: PeerProcess
) -> None:
    timeouts = {
        "2^62": b"\x01" + varint(2**62),
        "u64-max": b"\x01" + varint(2**64 - 1),
        "over-long-1": b"\x01\x81\x80\x00",
        "none": b"\x00",
    }
    cases = [
        Case(f"timeout-{name}", INVOKE, wrap(invoke_payload(timeout=raw)), Expect.of(OK))
        for name, raw in timeouts.items()
    ]
    await check_cases(channel, client, peer_process, cases)


async def test_moderately_nested_json_is_accepted(
    channel: Any, client: PeerClient, peer_process: PeerProcess
) -> None:
    nested = b"[" * 20 + b"]" * 20
    case = Case("nested-20", INVOKE, wrap(invoke_payload(input_json=nested)), Expect.of(OK))
    await check_cases(channel, client, peer_process, [case])


# --- empty payloads ---


def empty_cases(method: str) -> list[Case]:
    says = Expect.of(INVALID, "empty payload")
    return [
        Case(f"{method}-no-field", method, b"", says),
        Case(f"{method}-empty-field", method, wrap(b""), says),
        Case(f"{method}-unknown-field-only", method, bytes.fromhex("12 02 01 02"), says),
    ]


@by_method(empty_cases)
async def test_empty_payload_is_invalid_argument(
    channel: Any, client: PeerClient, peer_process: PeerProcess, cases: list[Case]
) -> None:
    await check_cases(channel, client, peer_process, cases)


# --- every truncation of a valid request ---


def truncation_cases(method: str) -> list[Case]:
    payload = valid_payload(method)
    cases = [Case(f"{method}-prefix-0", method, wrap(b""), Expect.of(INVALID, "empty payload"))]
    cases += [
        Case(
            f"{method}-prefix-{cut}",
            method,
            wrap(payload[:cut]),
            Expect.of(INVALID, f"payload of {cut} bytes does not decode as {PAYLOAD_TYPE[method]}"),
        )
        for cut in range(1, len(payload))
    ]
    return cases


@by_method(truncation_cases)
async def test_every_truncation_of_a_valid_request_is_invalid_argument(
    channel: Any, client: PeerClient, peer_process: PeerProcess, cases: list[Case]
) -> None:
    await check_cases(channel, client, peer_process, cases)


# --- random bytes ---


def mutate(rng: random.Random, payload: bytes) -> bytes:
    data = bytearray(payload)
    for _ in range(rng.randint(1, 3)):
        choice = rng.randrange(4)
        at = rng.randrange(len(data) + 1)
        if choice == 0 and data:
            data[min(at, len(data) - 1)] ^= rng.randint(1, 255)
        elif choice == 1:
            data[at:at] = rng.randbytes(rng.randint(1, 4))
        elif choice == 2 and data:
            del data[min(at, len(data) - 1)]
        else:
            data[at:] = rng.choice(list(HUGE_LENGTHS.values())) + rng.randbytes(rng.randint(0, 4))
    return bytes(data)


def random_cases(method: str) -> list[Case]:
    rng = random.Random(f"{SEED}-{method}")
    payloads: list[tuple[str, bytes]] = []
    for i in range(RANDOM_CASES_PER_FLAVOUR):
        payloads.append((f"random-{i}", rng.randbytes(rng.randint(0, 48))))
        payloads.append((f"v1-random-{i}", b"\x01" + rng.randbytes(rng.randint(0, 48))))
        payloads.append((f"mutated-{i}", mutate(rng, valid_payload(method))))
    return [
        Case(f"{method}-{name}", method, wrap(payload), expected_outcome(method, payload))
        for name, payload in payloads
    ]


@by_method(random_cases)
async def test_random_bytes_get_the_answer_wire_md_prescribes(
    channel: Any, client: PeerClient, peer_process: PeerProcess, cases: list[Case]
) -> None:
    invalid = sum(case.expect.codes == {INVALID} for case in cases)
    # The seeds give a mix, mostly refusals; a change that made them all valid
    # (or all unreadable) would make this test prove much less.
    assert invalid >= len(cases) // 4
    assert any(case.expect.codes == {PRECONDITION} for case in cases)
    await check_cases(channel, client, peer_process, cases)


# --- wrong types ---


def wrong_type_cases(method: str) -> list[Case]:
    bad = undecodable(method)
    if method in RUN_METHODS:
        payloads = {
            "option-tag-2": invoke_payload(timeout=b"\x02\x1e"),
            "option-tag-5": invoke_payload(timeout=b"\x05\x1e"),
            "option-tag-ff": invoke_payload(timeout=b"\xff"),
            "timeout-varint-11-bytes": invoke_payload(timeout=b"\x01" + b"\xff" * 10 + b"\x01"),
            "timeout-varint-overflows-u64": invoke_payload(timeout=b"\x01" + b"\xff" * 9 + b"\x7f"),
            "two-steps-declared-one-sent": invoke_payload()[:1]
            + prefixed(WORKFLOW.encode())
            + b"\x02"
            + prefixed(ECHO.encode()),
            "int-where-string-goes": b"\x01" + varint(300) + b"wf",
            "no-input-json": b"\x01" + prefixed(b"wf") + b"\x00",
            "missing-timeout-option": invoke_payload(timeout=b""),
        }
    else:
        text_uuid = str(uuid.UUID(bytes=REF_UUID)).encode()
        payloads = {
            "uuid-as-text": ref_payload(prefixed(text_uuid)),
            "uuid-of-4-bytes": ref_payload(prefixed(b"wfwf")),
            "uuid-of-15-bytes": ref_payload(prefixed(REF_UUID[:15])),
            "uuid-of-17-bytes": ref_payload(prefixed(REF_UUID + b"\x00")),
            "uuid-of-0-bytes": ref_payload(prefixed(b"")),
            "uuid-without-length": ref_payload(REF_UUID),
            "uuid-length-16-bytes-missing": ref_payload(b"\x10" + REF_UUID[:8]),
            "no-uuid": ref_payload(b""),
        }
    return [
        Case(f"{method}-{name}", method, wrap(payload), bad) for name, payload in payloads.items()
    ]


@by_method(wrong_type_cases)
async def test_wrong_types_are_invalid_argument(
    channel: Any, client: PeerClient, peer_process: PeerProcess, cases: list[Case]
) -> None:
    await check_cases(channel, client, peer_process, cases)


# --- envelope versions ---


def version_cases(method: str) -> list[Case]:
    body = valid_payload(method)[1:]
    cases = [
        Case(f"{method}-version-2", method, wrap(b"\x02" + body), newer(2)),
        Case(f"{method}-version-2-alone", method, wrap(b"\x02"), newer(2)),
        Case(f"{method}-version-2-then-garbage", method, wrap(b"\x02\xff\xff"), newer(2)),
        Case(f"{method}-version-300", method, wrap(varint(300) + body), newer(300)),
        Case(f"{method}-version-u32-max", method, wrap(varint(2**32 - 1) + body), newer(2**32 - 1)),
    ]
    unreadable = Expect.of(INVALID, "envelope version")
    for name, version in [
        ("2^32", varint(2**32)),
        ("2^62", varint(2**62)),
        ("u64-max", varint(2**64 - 1)),
        ("11-bytes-of-ff", b"\xff" * 11),
    ]:
        cases.append(Case(f"{method}-version-{name}", method, wrap(version + body), unreadable))
    # Nothing after the continuation bits: the varint never ends.
    for name, version in [("unterminated-1-byte", b"\x80"), ("unterminated-4-bytes", b"\xff" * 4)]:
        cases.append(Case(f"{method}-version-{name}", method, wrap(version), unreadable))
    return cases


@by_method(version_cases)
async def test_newer_versions_are_failed_precondition_and_unreadable_ones_invalid(
    channel: Any, client: PeerClient, peer_process: PeerProcess, cases: list[Case]
) -> None:
    await check_cases(channel, client, peer_process, cases)


# --- invalid UTF-8 in workflow_name / step ids ---

BAD_UTF8 = {
    "ff-fe": b"\xff\xfe",
    "lone-continuation": b"a\x80b",
    "bad-second-byte": b"\xc3\x28",
    "overlong-slash": b"\xc0\xaf",
    "surrogate": b"\xed\xa0\x80",
    "truncated-euro": b"\xe2\x82",
    "above-u10ffff": b"\xf4\x90\x80\x80",
}


def utf8_cases() -> list[Case]:
    says = Expect.of(INVALID, "does not decode as SubWorkflowRequest", "utf-8")
    cases = []
    for name, raw in BAD_UTF8.items():
        cases.append(Case(f"workflow-name-{name}", INVOKE, wrap(invoke_payload(name=raw)), says))
        cases.append(Case(f"step-id-{name}", INVOKE, wrap(invoke_payload(steps=[raw])), says))
        cases.append(
            Case(
                f"second-step-id-{name}",
                INVOKE,
                wrap(invoke_payload(steps=[ECHO.encode(), b"x::" + raw])),
                says,
            )
        )
    return cases


@one_per_case(utf8_cases())
async def test_invalid_utf8_in_names_is_invalid_argument(
    channel: Any, client: PeerClient, peer_process: PeerProcess, case: Case
) -> None:
    await check_cases(channel, client, peer_process, [case])


# --- input_json ---

NOT_JSON = {
    "empty": b"",
    "whitespace-only": b" \n\t ",
    "unquoted-key": b"{x:1}",
    "unterminated-object": b'{"x":',
    "trailing-garbage": b"{} x",
    "two-values": b"1 2",
    "nan": b"NaN",
    "infinity": b"-Infinity",
    "single-quotes": b"'x'",
    "utf8-bom": b"\xef\xbb\xbf{}",
    "utf16-le": '{"x":1}'.encode("utf-16-le"),
    "not-utf8": b"\xff\xfe\xfd",
    "not-utf8-inside-a-string": b'"\xff"',
    "surrogate-bytes-inside-a-string": b'{"k":"\xed\xa0\x80"}',
    "nul-byte": b"\x00",
    "control-char-in-string": b'"a\x01b"',
}

TOO_DEEP = {
    "100k-arrays": b"[" * 100_000 + b"]" * 100_000,
    "100k-arrays-unclosed": b"[" * 100_000,
    "100k-objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "100k-mixed": b'[{"a":' * 50_000 + b"1" + b"}]" * 50_000,
}


def json_cases() -> list[Case]:
    cases = [
        Case(
            f"input-json-{name}",
            INVOKE,
            wrap(invoke_payload(input_json=raw)),
            Expect.of(INVALID, "input_json", "json"),
        )
        for name, raw in NOT_JSON.items()
    ]
    cases += [
        Case(
            f"input-json-{name}",
            INVOKE,
            wrap(invoke_payload(input_json=raw)),
            Expect.of(INVALID, "input_json", "nesting depth"),
        )
        for name, raw in TOO_DEEP.items()
    ]
    return cases


@one_per_case(json_cases())
async def test_input_json_that_is_not_json_is_invalid_argument(
    channel: Any, client: PeerClient, peer_process: PeerProcess, case: Case
) -> None:
    await check_cases(channel, client, peer_process, [case])


# --- lengths no message can hold ---


def huge_length_cases(method: str) -> list[Case]:
    bad = undecodable(method)
    cases = []
    for name, huge in HUGE_LENGTHS.items():
        if method in RUN_METHODS:
            sites = {
                "workflow-name": b"\x01" + huge + b"wf",
                "step-count": b"\x01" + prefixed(b"wf") + huge + prefixed(ECHO.encode()),
                "step-id": b"\x01" + prefixed(b"wf") + b"\x01" + huge + b"test",
                "input-json": b"\x01" + prefixed(b"wf") + b"\x00" + huge + b"{}",
            }
        else:
            sites = {"uuid": b"\x01" + huge + REF_UUID}
        cases += [
            Case(f"{method}-{site}-length-{name}", method, wrap(payload), bad)
            for site, payload in sites.items()
        ]
    # A 10-byte payload declaring 4 GiB, and a 1 MiB one of garbage.
    cases.append(
        Case(f"{method}-4GiB-in-10-bytes", method, wrap(b"\x01" + varint(2**32) + b"abcd"), bad)
    )
    garbage = b"\x01\xff" + random.Random(SEED).randbytes(1 << 20)
    cases.append(Case(f"{method}-1MiB-of-garbage", method, wrap(garbage), bad))
    return cases


@by_method(huge_length_cases)
async def test_huge_declared_lengths_are_invalid_argument(
    channel: Any, client: PeerClient, peer_process: PeerProcess, cases: list[Case]
) -> None:
    await check_cases(channel, client, peer_process, cases)


# --- a protobuf shell that does not decode ---

MALFORMED_SHELLS = {
    "length-4GiB": bytes.fromhex("0a ff ff ff ff 0f"),
    "length-2^62": b"\x0a" + varint(2**62),
    "length-past-the-end": bytes.fromhex("0a 05 01"),
    "tag-without-length": bytes.fromhex("0a"),
    "length-varint-unterminated": bytes.fromhex("0a ff ff ff ff ff ff ff ff ff ff"),
    "field-1-as-varint": bytes.fromhex("08 01"),
    "field-1-as-fixed32": bytes.fromhex("0d 01 00 00 00"),
    "start-group": bytes.fromhex("0b"),
    "field-number-0": bytes.fromhex("02 01 01"),
}


def shell_cases(method: str) -> list[Case]:
    says = Expect.of(INTERNAL, "failed to decode", "protobuf")
    return [Case(f"{method}-{name}", method, raw, says) for name, raw in MALFORMED_SHELLS.items()]


@by_method(shell_cases)
async def test_a_malformed_protobuf_shell_is_refused(
    channel: Any, client: PeerClient, peer_process: PeerProcess, cases: list[Case]
) -> None:
    await check_cases(channel, client, peer_process, cases)

"""Just enough HTTP/2, written by hand, to misbehave the way an attacker would:
open gRPC streams, send part of a body and stop (the `h2` package is not a
dependency). Used by tests/test_faults_transport.py.

Frames are RFC 9113's: a 9-byte header (24-bit length, type, flags, 31-bit
stream id) and a payload. Request headers use HPACK literals without indexing
or Huffman coding, which every decoder accepts.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from dataclasses import dataclass

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
CANCEL = 0x8
#: The largest DATA payload a server must accept before its SETTINGS say more.
DEFAULT_MAX_FRAME = 16 * 1024
INVOKE_PATH = "/blazen.peer.v1.BlazenPeer/InvokeSubWorkflow"


@dataclass
class H2Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream_id)
        + payload
    )


def _literal(name: str, value: str) -> bytes:
    """An HPACK "literal header field without indexing, new name" (RFC 7541 6.2.2)."""

    def string(text: str) -> bytes:
        raw = text.encode()
        assert len(raw) < 127, "longer strings need a multi-byte length"
        return bytes([len(raw)]) + raw

    return b"\x00" + string(name) + string(value)


def grpc_message_header(declared_length: int) -> bytes:
    """The 5-byte gRPC frame header: not compressed, then the message's length."""
    return b"\x00" + struct.pack(">I", declared_length)


class RawH2Connection:
    """One plaintext HTTP/2 connection to ``host:port``, driven frame by frame."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.socket()
        self.sock.settimeout(10)
        self.sock.connect((host, port))
        self.sock.sendall(PREFACE + _frame(SETTINGS, 0, 0))
        self._buffer = b""
        self._next_stream = 1
        self.frames: list[H2Frame] = []
        # The server's flow-control windows apply once its SETTINGS are
        # acknowledged (read_frames does) and its connection WINDOW_UPDATE
        # arrived; before that a client may send 64 KiB per stream.
        deadline = time.monotonic() + 10
        while not (
            any(frame.type == SETTINGS and not frame.flags & ACK for frame in self.frames)
            and any(frame.type == WINDOW_UPDATE and frame.stream_id == 0 for frame in self.frames)
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("the server's SETTINGS and WINDOW_UPDATE never came")
            self.read_frames(0.05)

    def open_grpc_stream(self, path: str = INVOKE_PATH) -> int:
        """Sends the request headers of a new gRPC call; returns its stream id."""
        stream_id = self._next_stream
        self._next_stream += 2
        block = b"".join(
            _literal(name, value)
            for name, value in [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        )
        self.sock.sendall(_frame(HEADERS, END_HEADERS, stream_id, block))
        return stream_id

    def rapid_reset_pairs(self, count: int) -> bytes:
        """``count`` new streams, each opened and at once reset (CANCEL): the
        "rapid reset" attack, as bytes to send."""
        block = b"".join(
            _literal(name, value)
            for name, value in [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", INVOKE_PATH),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
            ]
        )
        pairs = []
        for _ in range(count):
            stream_id = self._next_stream
            self._next_stream += 2
            pairs.append(_frame(HEADERS, END_HEADERS, stream_id, block))
            pairs.append(_frame(RST_STREAM, 0, stream_id, struct.pack(">I", CANCEL)))
        return b"".join(pairs)

    def send_ignoring_close(self, data: bytes) -> None:
        """Sends ``data``; a connection the server closed meanwhile ends it quietly."""
        self.sock.settimeout(None)
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        frames = []
        for start in range(0, len(data), DEFAULT_MAX_FRAME):
            piece = data[start : start + DEFAULT_MAX_FRAME]
            last = start + DEFAULT_MAX_FRAME >= len(data)
            frames.append(_frame(DATA, END_STREAM if last and end_stream else 0, stream_id, piece))
        self.sock.sendall(b"".join(frames))

    def read_frames(self, timeout: float) -> list[H2Frame]:
        """Reads what arrives within ``timeout`` seconds (answering SETTINGS and
        PING as a peer must); returns the frames, also kept in ``frames``."""
        deadline = time.monotonic() + timeout
        received: list[H2Frame] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([self.sock], [], [], remaining)
            if not ready:
                break
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionError:
                chunk = b""
            if not chunk:
                break
            self._buffer += chunk
            received.extend(self._parse())
        self.frames.extend(received)
        return received

    def ended_streams(self) -> set[int]:
        """Streams the server ended: a HEADERS with END_STREAM (its answer) or a RST_STREAM."""
        return {
            frame.stream_id
            for frame in self.frames
            if frame.type == RST_STREAM or (frame.type == HEADERS and frame.flags & END_STREAM)
        }

    def _parse(self) -> list[H2Frame]:
        frames = []
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                break
            kind, flags = self._buffer[3], self._buffer[4]
            stream_id = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            payload = self._buffer[9 : 9 + length]
            self._buffer = self._buffer[9 + length :]
            if kind == SETTINGS and not flags & ACK:
                self.sock.sendall(_frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                self.sock.sendall(_frame(PING, ACK, 0, payload))
            frames.append(H2Frame(kind, flags, stream_id, payload))
        return frames

    def close(self) -> None:
        self.sock.close()

"""The latency floor: a 64-byte ping-pong over raw TCP with _echo_server.py.

Blocking sockets with TCP_NODELAY and no protocol: the least any RPC between two
processes on this machine can cost.
"""

from __future__ import annotations

import socket

from _measure import CorrectnessError

MESSAGE_BYTES = 64


class TcpFloor:
    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def call(self, seq: int) -> None:
        """One ping-pong. Blocking on purpose: an event loop wake-up is not part of the
        floor (the coroutine wrapper only lets the latency loop time it like the others)."""
        message = seq.to_bytes(8, "little") * (MESSAGE_BYTES // 8)
        self._sock.sendall(message)
        received = b""
        while len(received) < MESSAGE_BYTES:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise CorrectnessError("the echo server closed the connection")
            received += chunk
        if received != message:
            raise CorrectnessError(f"ping {seq} echoed {received!r}")

    def close(self) -> None:
        self._sock.close()

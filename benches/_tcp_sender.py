"""Bulk sender for the TCP bandwidth floor: prints READY PORT, then sends
SIZE bytes to each connection it accepts, in 1 MiB slices of one buffer.

Run by deref_throughput.py: python benches/_tcp_sender.py SIZE
"""

import socket
import sys

CHUNK = 1024 * 1024

size = int(sys.argv[1])
buffer = memoryview(bytes(range(256)) * (CHUNK // 256))
listener = socket.create_server(("127.0.0.1", 0))
print(f"READY {listener.getsockname()[1]}", flush=True)
while True:
    conn, _ = listener.accept()
    with conn:
        sent = 0
        while sent < size:
            piece = buffer[: min(CHUNK, size - sent)]
            conn.sendall(piece)
            sent += len(piece)

"""Bulk sender for the TCP bandwidth floor: prints READY PORT, then sends
SIZE bytes to each connection it accepts, in 1 MiB slices. The first byte a
client sends picks the source: b"h" one cache-hot 1 MiB buffer sent over and
over, b"w" one SIZE-byte buffer (what a peer holding a large value reads from).

Run by deref_throughput.py: python benches/_tcp_sender.py SIZE
"""

import socket
import sys

CHUNK = 1024 * 1024

size = int(sys.argv[1])
hot = memoryview(bytes(range(256)) * (CHUNK // 256))
whole = memoryview(bytes(range(256)) * (size // 256 + 1))[:size]
listener = socket.create_server(("127.0.0.1", 0))
print(f"READY {listener.getsockname()[1]}", flush=True)
while True:
    conn, _ = listener.accept()
    with conn:
        mode = conn.recv(1)
        sent = 0
        while sent < size:
            length = min(CHUNK, size - sent)
            conn.sendall(hot[:length] if mode == b"h" else whole[sent : sent + length])
            sent += length

"""Echo server for the TCP floor: prints READY PORT, echoes one connection."""

import socket

listener = socket.create_server(("127.0.0.1", 0))
print(f"READY {listener.getsockname()[1]}", flush=True)
conn, _ = listener.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while data := conn.recv(4096):
    conn.sendall(data)

"""The grpcio baseline's server: one grpc.aio unary method doing what bench::noop does.

Request and response are raw bytes (generic handler, no protobuf codegen): the handler
json-decodes the input and json-encodes {"result": data}, the JSON work our step's run
does too, so the two differ only in the RPC machinery. Prints READY HOST:PORT.

Run: python benches/_grpc_server.py
"""

from __future__ import annotations

import asyncio
import json

import grpc

SERVICE = "bench.Bench"
METHOD = "Noop"


async def noop(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    data = json.loads(request)
    return json.dumps({"result": data}, separators=(",", ":")).encode()


async def main() -> None:
    server = grpc.aio.server()
    # No (de)serializers: the handler sees and returns bytes as they travel.
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(noop)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"READY 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())

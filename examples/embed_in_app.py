# examples/embed_in_app.py
import asyncio
import signal
import sys

from blazen_peer import Context, PeerServer, StartEvent, StopEvent, step


@step("my_app::greet")
async def greet(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=f"hello, {ev.data}")


async def main(address: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):  # the application's own handlers
        loop.add_signal_handler(signum, stop.set)

    server = PeerServer("node-b")
    bound = await server.start(address)  # startup hook: serves in the background
    print(f"app and peer up, peer on {bound}", flush=True)
    try:
        await stop.wait()  # ... the rest of the application runs here ...
    finally:
        await server.stop(grace=10)  # shutdown hook: drain the peer, then return
    print("app and peer stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"))

"""An upload in its own process, for the tests to kill midway.

    python tests/upload_client.py ADDRESS SIZE [--parent]

Connects with the smallest message limit (so the peer sizes the pieces at about
1 KiB and the upload takes many messages), prints ``UPLOADING``, and uploads
``SIZE`` bytes: ``UNTIL_EXPLICIT_DROP``, or with ``--parent`` inside a parent run.
Prints ``DONE <key>`` if it ever finishes; the tests SIGKILL it before that, or,
with ``--parent``, after it (a parent that dies without finishing).
"""

from __future__ import annotations

import asyncio
import sys

from blazen_peer import PeerClient, RefLifetime
from blazen_peer._native import MIN_MAX_MESSAGE_BYTES


async def main(address: str, size: int, parent: bool) -> None:
    client = await PeerClient.connect(
        address, node_id="node-uploader", max_message_bytes=MIN_MAX_MESSAGE_BYTES
    )
    value = bytearray(size)
    print("UPLOADING", flush=True)
    if parent:
        async with client.parent_run():
            ref = await client.put_session_ref(value)
            print(f"DONE {ref}", flush=True)
            # Stays in the block (heartbeat running) until stdin closes or we are killed.
            await asyncio.to_thread(sys.stdin.buffer.read)
    else:
        ref = await client.put_session_ref(value, lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
        print(f"DONE {ref}", flush=True)
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), "--parent" in sys.argv[3:]))

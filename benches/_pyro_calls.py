"""The Pyro5 baseline's client side: one proxy for sequential calls; a thread and
a proxy per call in flight for throughput (Pyro5 is synchronous: a proxy makes
one call at a time, and its server gives each connection a thread)."""

from __future__ import annotations

import threading
import time

import Pyro5.api
from _measure import check_echo, payload


class PyroCalls:
    def __init__(self, uri: str) -> None:
        self._uri = uri
        self._proxy = Pyro5.api.Proxy(uri)
        self._proxy._pyroBind()

    async def call(self, seq: int) -> None:
        """One echo call; it blocks the event loop, which only this call is using."""
        check_echo(seq, self._proxy.echo(payload(seq)))

    def throughput(self, in_flight: int, seconds: float) -> float:
        """Calls per second with ``in_flight`` threads calling, each on its own proxy."""
        completed = [0] * in_flight
        failures: list[BaseException] = []
        ready = threading.Barrier(in_flight + 1)
        deadline = 0.0

        def worker(index: int) -> None:
            with Pyro5.api.Proxy(self._uri) as proxy:
                proxy._pyroBind()
                ready.wait()
                seq = (index + 1) << 32
                try:
                    while time.perf_counter() < deadline:
                        check_echo(seq, proxy.echo(payload(seq)))
                        completed[index] += 1
                        seq += 1
                except BaseException as exc:  # reported by the caller below
                    failures.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(in_flight)]
        for thread in threads:
            thread.start()
        # Connected first, so the window times calls, not connection set-up.
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        ready.wait()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        # The last calls end after the deadline: divide by the time they really took.
        return sum(completed) / (time.perf_counter() - started)

    async def close(self) -> None:
        self._proxy._pyroRelease()

"""A Pyro5 echo server for the Pyro5 baseline: prints READY URI, serves until killed.

Pyro5's default server: a thread per connection, synchronous, pure Python.
"""

import Pyro5.api


@Pyro5.api.expose
class Echo:
    def echo(self, data: object) -> object:
        return data


daemon = Pyro5.api.Daemon(host="127.0.0.1")
uri = daemon.register(Echo, "bench.echo")
print(f"READY {uri}", flush=True)
daemon.requestLoop()

"""Starts peer node-b in another process, delegates the two-step pipeline to it,
and prints the result and exported state; then does the same from a local
Workflow step, as in the Rust guide's planned Python example.

Run: python examples/demo.py [--json]

The same as `blazen-peer demo`, whose code this runs (blazen_peer/cli/demo.py, part
of the installed package, which this directory is not); node-b serves the README's
steps from their one copy, blazen_peer/cli/_demo_peer.py (see peer_b.py).
"""

import sys

from blazen_peer.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))

"""``python -m blazen_peer``: the ``blazen-peer`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

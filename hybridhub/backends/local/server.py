"""The local backend's single-user server: ``jupyterhub-singleuser`` with hybridhub's log hygiene.

A local server writes its log to the hub's own output, so it scrubs it the way the hub does
(:mod:`hybridhub.loghygiene`): jupyter-server logs the xsrf id it derives from the
``jupyterhub-session-id`` cookie at INFO, which must not reach the hub's log.
"""

from __future__ import annotations

import sys

from hybridhub import loghygiene


def run() -> int:
    """Install the log hygiene, then run ``jupyterhub-singleuser`` with this process's argv."""
    loghygiene.install()
    from jupyterhub.singleuser import main

    return main() or 0


if __name__ == "__main__":
    sys.exit(run())

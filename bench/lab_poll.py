"""Portal requests made by Lab tabs through the hybridhub server extension, against a baseline.

A local HTTP server stands in for the portal and counts requests.  ``--tabs`` Lab tabs each
ask for the session every ``--poll`` seconds for ``--seconds`` seconds (time scaled down:
``--interval`` plays the role of the 30 s minimum interval).  Baseline: every tab request
goes to the portal (no server-side cache).  Measured in the same run: the same tabs through
:class:`hybridhub_lab.upstream.SessionSource`, once with the portal up and once with it
answering 503 (back-off).  Prints requests and the ratio to the baseline.

    .venv/bin/python -m bench.lab_poll --tabs 20 --seconds 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging

from tornado import web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from hybridhub_lab.upstream import SessionSource


class FakePortal(web.RequestHandler):
    """Counts requests; answers a session, or 503 while ``down``."""

    def get(self) -> None:
        state = self.settings["state"]
        state["requests"] += 1
        if state["down"]:
            raise web.HTTPError(503)
        self.finish(json.dumps({"warnings": []}))


async def run_tabs(get, tabs: int, poll: float, seconds: float) -> None:
    """``tabs`` pollers calling ``get`` every ``poll`` seconds for ``seconds``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def tab() -> None:
        while loop.time() < end:
            try:
                await get()
            except Exception:
                pass
            await asyncio.sleep(poll)

    await asyncio.gather(*(tab() for _ in range(tabs)))


async def main(args: argparse.Namespace) -> None:
    logging.getLogger("tornado.access").setLevel(logging.ERROR)  # the 503s are on purpose
    state = {"requests": 0, "down": False}
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(web.Application([(r"/api/users/u/session", FakePortal)], state=state))
    server.add_sockets(sockets)
    url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/api/users/u/session"
    client = AsyncHTTPClient()

    async def direct() -> None:
        await client.fetch(url)

    results = {}
    await run_tabs(direct, args.tabs, args.poll, args.seconds)
    results["baseline (no cache)"] = state["requests"]
    for down in (False, True):
        state.update(requests=0, down=down)
        source = SessionSource(url, "token", min_interval=args.interval, max_backoff=10 * args.interval)
        await run_tabs(source.get, args.tabs, args.poll, args.seconds)
        results["SessionSource, portal " + ("down" if down else "up")] = state["requests"]
    server.stop()
    base = results["baseline (no cache)"]
    print(f"{args.tabs} tabs polling every {args.poll}s for {args.seconds}s, min interval {args.interval}s")
    for name, count in results.items():
        print(f"  {name:32s} {count:6d} portal requests   ratio {count / base:.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tabs", type=int, default=20, help="Lab tabs polling at once")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between a tab's polls")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each run")
    parser.add_argument("--interval", type=float, default=0.5, help="stands in for the 30 s minimum")
    asyncio.run(main(parser.parse_args()))

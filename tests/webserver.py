"""A real uvicorn server for web tests: in a background thread, on a free local port.

Tests talk to it over TCP (httpx, a browser) exactly as mail readers' browsers
would, so the whole stack runs: uvicorn's HTTP parsing, the threadpool, the
middleware and the headers actually sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

START_TIMEOUT = 120.0
"""How long uvicorn may take to start or stop on a loaded machine (a bound on a
wait, not on speed)."""


@contextmanager
def running(app: ASGIApp, port: int | None = None) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 while the block runs; yields the base URL.

    Without ``port`` (or with 0) uvicorn binds a port the kernel picks, and the
    URL names the one it got; a ``port`` given is one the test reserved."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port or 0, log_level="warning", ws="none", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        _wait_until_started(server, thread)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=START_TIMEOUT)
        assert not thread.is_alive(), "uvicorn did not stop"


def _wait_until_started(server: uvicorn.Server, thread: threading.Thread) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited before it started")
        if time.monotonic() > deadline:
            raise TimeoutError("uvicorn did not start")
        time.sleep(0.01)

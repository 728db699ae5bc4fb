"""Fixtures of the dashboard tests: the app served for real, on a loopback socket."""

from __future__ import annotations

import contextlib
import threading
import time


@contextlib.contextmanager
def serving(app, listener):
    """Serve *app* with uvicorn in a thread (as ``meshctl dashboard`` does in its process), then stop it."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1))
    server.capture_signals = contextlib.nullcontext  # signals belong to pytest's main thread
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener.sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the dashboard did not start")
        time.sleep(0.01)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(10)
        listener.sock.close()

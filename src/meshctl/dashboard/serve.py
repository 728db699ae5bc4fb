"""Run the dashboard: bind, print where it is, open a browser where one can open, serve until Ctrl-C."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import sys

from meshctl.errors import MeshctlError


@dataclasses.dataclass(frozen=True, slots=True)
class Listener:
    sock: socket.socket
    address: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"


def bind(address: str, port: int) -> Listener:
    """Listen on *address*:*port* now (port 0: any free one), so the URL printed is the one served."""
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise MeshctlError(f"--address {address}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(sockaddr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise MeshctlError(f"--address {address} --port {port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return Listener(sock, address, sock.getsockname()[1])


def can_open_browser(stream=None) -> bool:
    """Open a browser only for a person at a terminal with a display (never in CI, ssh or a pipe)."""
    stream = stream or sys.stdout
    if not (hasattr(stream, "isatty") and stream.isatty()):
        return False
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_browser(url: str) -> bool:
    import webbrowser

    try:
        return webbrowser.open(url)
    except webbrowser.Error:
        return False


def run(app, listener: Listener) -> None:
    """Serve *app* on *listener* until SIGINT or SIGTERM, then return (the command exits 0, as linkerd's does)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn re-raises the signal after its graceful shutdown (so Ctrl-C
            # would end as KeyboardInterrupt, exit 130); a dashboard stopped by
            # its user has not failed: shut down and return.
            handlers = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in handlers.items():
                    signal.signal(s, h)

    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                            timeout_graceful_shutdown=2, ws="none")
    Server(config).run(sockets=[listener.sock])

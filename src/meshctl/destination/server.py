"""The destination server: streams resolutions to proxies over HTTP/1.1.

Protocol (``docs/destination.md``): ``GET /v1/watch?authority=A`` answers
``200`` with ``application/x-ndjson`` in chunked transfer encoding; one JSON
object a line, ``{"type": "update", "resolution": {...}}`` first and on every
change of that authority's resolution, ``{"type": "heartbeat"}`` after
``heartbeat`` seconds of silence (so a proxy notices a dead server without
TCP keepalive).  Full resolutions rather than add/remove diffs: endpoint sets
are small, and a proxy that reconnects needs no state to catch up.
``GET /v1/resolve?authority=A`` answers one resolution; ``GET /ready`` is the
readiness probe.

The server knows only the :class:`~meshctl.destination.discovery.Discovery`
interface, so the same code serves the local registry and Kubernetes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.parse

import h11

from meshctl.destination.discovery import Discovery

log = logging.getLogger("meshctl.destination")

HEARTBEAT = 5.0  # seconds of silence before a heartbeat line; the client gives up after 3 missed
MAX_REQUEST_HEAD = 16 * 1024  # h11's own default limit; a proxy's watch request is ~100 bytes


class DestinationServer:
    def __init__(self, discovery: Discovery, *, heartbeat: float = HEARTBEAT) -> None:
        self.discovery = discovery
        self.heartbeat = heartbeat
        self.watchers = 0  # open watch streams (for tests and logs)
        self._connections: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._accept, host, port, reuse_address=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, h11.RemoteProtocolError):
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    return
                continue
            if isinstance(event, h11.Request):
                break
            if isinstance(event, h11.ConnectionClosed):
                return
        target = urllib.parse.urlsplit(event.target.decode("latin-1"))
        query = urllib.parse.parse_qs(target.query)
        path = target.path
        if event.method != b"GET":
            return await self._send_json(conn, writer, 405, {"error": "only GET is served"})
        if path in ("/ready", "/live"):
            return await self._send_json(conn, writer, 200, {"status": "ok", "version": self.discovery.version})
        if path not in ("/v1/watch", "/v1/resolve"):
            return await self._send_json(conn, writer, 404, {"error": f"no such path {path}"})
        authority = (query.get("authority") or [""])[0]
        try:
            resolution = self.discovery.resolve(authority)
        except ValueError as exc:
            return await self._send_json(conn, writer, 400, {"error": f"authority: {exc}"})
        if path == "/v1/resolve":
            return await self._send_json(conn, writer, 200, resolution.to_json())
        await self._watch(conn, reader, writer, authority)

    async def _send_json(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, doc: dict) -> None:
        body = (json.dumps(doc, separators=(",", ":")) + "\n").encode()
        writer.write(conn.send(h11.Response(status_code=status, headers=[
            ("content-type", "application/json"), ("content-length", str(len(body))), ("connection", "close")])))
        writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _watch(self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     authority: str) -> None:
        writer.write(conn.send(h11.Response(status_code=200, headers=[
            ("content-type", "application/x-ndjson"), ("cache-control", "no-store")])))
        self.watchers += 1
        # The client never sends more on a watch: EOF (or an error) means it left.
        gone = asyncio.ensure_future(reader.read(1))
        changed: asyncio.Future | None = None
        last = None
        try:
            timed_out = False
            while not gone.done():
                version = self.discovery.version
                resolution = self.discovery.resolve(authority)
                line = None
                if resolution != last:
                    last = resolution
                    line = {"type": "update", "version": version, "resolution": resolution.to_json()}
                elif timed_out:
                    line = {"type": "heartbeat", "version": version}
                if line is not None:
                    writer.write(conn.send(h11.Data(data=(json.dumps(line, separators=(",", ":")) + "\n").encode())))
                    await writer.drain()
                changed = asyncio.ensure_future(self.discovery.wait_changed(version))
                done, _ = await asyncio.wait({gone, changed}, timeout=self.heartbeat,
                                             return_when=asyncio.FIRST_COMPLETED)
                timed_out = not done
                changed.cancel()
        finally:
            self.watchers -= 1
            for fut in (gone, changed):
                if fut is not None:
                    fut.cancel()
                    with contextlib.suppress(BaseException):
                        await fut


async def serve(discovery: Discovery, host: str, port: int, *, ready: asyncio.Event | None = None,
                heartbeat: float = HEARTBEAT) -> None:
    """Run *discovery* and the server until cancelled."""
    server = DestinationServer(discovery, heartbeat=heartbeat)
    srv = await server.start(host, port)
    addr = srv.sockets[0].getsockname()
    log.info("destination service listening on %s:%s", addr[0], addr[1])
    async with srv, asyncio.TaskGroup() as tg:
        tg.create_task(discovery.run())
        if ready is not None:
            ready.set()
        await srv.serve_forever()

"""Real upstream applications for the proxy tests, run on loopback in a background thread.

``Http1App`` is an h11 server (an independent HTTP/1.1 implementation, so the
proxy is checked against something other than itself): echo, chunked and
large bodies, delays, status codes, 100-continue, trailers-free chunked
bodies, close-delimited bodies and an ``Upgrade: echo`` protocol that echoes
raw bytes after a 101.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from urllib.parse import parse_qs, urlsplit

import h11


class LoopThread:
    """An asyncio loop in a daemon thread, for servers the tests talk to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Http1App:
    def __init__(self) -> None:
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.connections = 0
        self.requests: list[dict] = []

    async def start(self) -> "Http1App":
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.close()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if conn.they_are_waiting_for_100_continue:
                        writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    if not data and conn.their_state is not h11.DONE:
                        break
                    continue
                if isinstance(event, h11.Request):
                    if await self._handle(conn, event, reader, writer):
                        return
                    if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                        break
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    break
                elif event is h11.PAUSED:
                    break
        except (ConnectionError, h11.RemoteProtocolError):
            pass
        finally:
            writer.close()

    async def _body(self, conn, reader, writer) -> tuple[bytes, list]:
        parts = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                data = await reader.read(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(parts), list(event.headers)

    async def _handle(self, conn, req, reader, writer) -> bool:
        url = urlsplit(req.target.decode())
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        headers = [(k.decode(), v.decode()) for k, v in req.headers]
        if any(k == "upgrade" and v == "echo" for k, v in headers):
            writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=[
                ("connection", "upgrade"), ("upgrade", "echo")])))
            tail, _ = conn.trailing_data
            if tail:
                writer.write(tail)
            while data := await reader.read(65536):
                writer.write(b"echo:" + data)
                await writer.drain()
            writer.close()
            return True
        body, _trailers = await self._body(conn, reader, writer)
        self.requests.append({"method": req.method.decode(), "target": req.target.decode(), "headers": headers,
                              "body": body})
        path = url.path
        send = writer.write
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            send(conn.send(h11.Response(status_code=status, headers=[("content-length", "0")])))
            send(conn.send(h11.EndOfMessage()))
        elif path == "/slow":
            await asyncio.sleep(float(q.get("s", "0.5")))
            send(conn.send(h11.Response(status_code=200, headers=[("content-length", "4")])))
            send(conn.send(h11.Data(data=b"slow")) + conn.send(h11.EndOfMessage()))
        elif path == "/chunked":
            send(conn.send(h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")])))
            for i in range(int(q.get("n", "5"))):
                send(conn.send(h11.Data(data=f"chunk{i};".encode())))
                await writer.drain()
                await asyncio.sleep(float(q.get("gap", "0")))
            send(conn.send(h11.EndOfMessage()))
        elif path == "/big":
            size = int(q.get("size", "1000000"))
            block = bytes(range(256)) * 256
            send(conn.send(h11.Response(status_code=200, headers=[("content-length", str(size))])))
            left = size
            while left:
                piece = block[:min(left, len(block))]
                send(conn.send(h11.Data(data=piece)))
                left -= len(piece)
                await writer.drain()
            send(conn.send(h11.EndOfMessage()))
        elif path == "/close":
            send(conn.send(h11.Response(status_code=200, headers=[("connection", "close")])))
            send(conn.send(h11.Data(data=b"until-close")) + conn.send(h11.EndOfMessage()))
            await writer.drain()
            writer.close()
            return True
        else:
            payload = json.dumps({"method": req.method.decode(), "target": req.target.decode(), "headers": headers,
                                  "body_len": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
                                  "body": body[:200].decode("latin-1")}).encode()
            send(conn.send(h11.Response(status_code=200, headers=[("content-type", "application/json"),
                                                                 ("content-length", str(len(payload)))])))
            send(conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage()))
        await writer.drain()
        return False

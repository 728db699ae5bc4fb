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


class H2App(asyncio.Protocol):
    """An HTTP/2 (prior knowledge) server built on h2, for the proxy's HTTP/2 tests.

    Paths: ``/echo`` (body back, request headers as x-req-* , trailers when the
    request has ``want-trailers: 1``), ``/big?size=N`` (flow-controlled body),
    ``/slow?s=F``, ``/reset?code=N`` (RST_STREAM before answering),
    ``/stream?n=N&gap=F`` (DATA frames spaced in time), ``/refuse-once?key=K``
    (REFUSED_STREAM the first time K is asked for, answered as ``/echo`` after), ``/malformed?what=W``
    (a response RFC 9113 calls malformed: ``upper`` a field name in upper
    case, ``status`` a non-numeric :status, ``trailers`` a pseudo-header in
    the trailers), ``/goaway?delay=F`` (then GOAWAY naming this stream as the
    last one served: later streams are refused).
    """

    server: asyncio.AbstractServer | None = None

    def __init__(self, owner: "H2Server") -> None:
        import h2.config
        import h2.connection

        self.owner = owner
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.bodies: dict[int, list[bytes]] = {}
        self.heads: dict[int, dict] = {}
        self.windows: dict[int, asyncio.Future] = {}
        self.tasks: set = set()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.owner.connections += 1
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        import h2.events

        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.heads[ev.stream_id] = dict(ev.headers)
                self.bodies[ev.stream_id] = []
                self.owner.requests.append(dict(ev.headers))
            elif isinstance(ev, h2.events.DataReceived):
                self.bodies[ev.stream_id].append(ev.data)
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                task = asyncio.get_running_loop().create_task(self.respond(ev.stream_id))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif isinstance(ev, h2.events.StreamReset):
                self.owner.resets.append((ev.stream_id, ev.error_code))
            elif isinstance(ev, h2.events.WindowUpdated):
                for fut in list(self.windows.values()):
                    if not fut.done():
                        fut.set_result(None)
                self.windows.clear()
        self.transport.write(self.conn.data_to_send())

    async def send_all(self, sid: int, data: bytes, end: bool) -> None:
        while data:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                fut = self.windows[sid] = asyncio.get_running_loop().create_future()
                await fut
                continue
            self.conn.send_data(sid, data[:window])
            data = data[window:]
            self.transport.write(self.conn.data_to_send())
        if end:
            self.conn.end_stream(sid)
            self.transport.write(self.conn.data_to_send())

    async def respond(self, sid: int) -> None:
        head = self.heads[sid]
        body = b"".join(self.bodies[sid])
        url = urlsplit(head[b":path"].decode())
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        conn = self.conn
        try:
            if url.path == "/malformed":
                what = q.get("what", "upper")
                conn.config.validate_outbound_headers = conn.config.normalize_outbound_headers = False
                try:  # h2 would refuse to send these
                    status = b"2xx" if what == "status" else b"200"
                    extra = [(b"X-Upper", b"1")] if what == "upper" else []
                    conn.send_headers(sid, [(b":status", status), *extra])
                    conn.send_data(sid, b"body")
                    trailers = [(b":status", b"200")] if what == "trailers" else [(b"x-t", b"1")]
                    conn.send_headers(sid, trailers, end_stream=True)
                finally:
                    conn.config.validate_outbound_headers = conn.config.normalize_outbound_headers = True
            elif url.path == "/goaway":  # after a delay: GOAWAY naming this stream as the last it serves
                from hyperframe.frame import GoAwayFrame

                await asyncio.sleep(float(q.get("delay", "0.3")))
                self.transport.write(conn.data_to_send() + GoAwayFrame(0, last_stream_id=sid).serialize())
                conn.send_headers(sid, [(b":status", b"200")])
                await self.send_all(sid, b"bye", True)
            elif url.path == "/reset":
                conn.reset_stream(sid, int(q.get("code", "2")))
            elif url.path == "/refuse-once" and q.get("key") not in self.owner.refused:
                self.owner.refused.add(q.get("key"))  # REFUSED_STREAM the first time a key is asked for
                conn.reset_stream(sid, 7)
            elif url.path == "/slow":
                await asyncio.sleep(float(q.get("s", "0.5")))
                conn.send_headers(sid, [(b":status", b"200")])
                await self.send_all(sid, b"slow", True)
            elif url.path == "/big":
                conn.send_headers(sid, [(b":status", b"200")])
                await self.send_all(sid, bytes(range(256)) * (int(q.get("size", "1000000")) // 256), True)
            elif url.path == "/stream":
                conn.send_headers(sid, [(b":status", b"200")])
                for i in range(int(q.get("n", "3"))):
                    await self.send_all(sid, f"part{i};".encode(), False)
                    await asyncio.sleep(float(q.get("gap", "0")))
                await self.send_all(sid, b"", True)
            else:
                headers = [(b":status", b"200"), (b"x-body-sha256", hashlib.sha256(body).hexdigest().encode()),
                           (b"x-path", head[b":path"]), (b"x-authority", head.get(b":authority", b""))]
                conn.send_headers(sid, headers)
                trailers = head.get(b"want-trailers") == b"1"
                await self.send_all(sid, body or b"empty", not trailers)
                if trailers:
                    conn.send_headers(sid, [(b"grpc-status", b"0"), (b"x-trailer", b"yes")], end_stream=True)
            self.transport.write(conn.data_to_send())
        except Exception:  # the stream went away under us (reset by the client)
            pass


class H2Server:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[dict] = []
        self.resets: list[tuple[int, int]] = []
        self.refused: set = set()  # /refuse-once keys already refused
        self.port = 0

    async def start(self) -> "H2Server":
        self.server = await asyncio.get_running_loop().create_server(lambda: H2App(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.close()

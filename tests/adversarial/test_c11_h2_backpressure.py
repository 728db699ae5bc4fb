"""Class 11: HTTP/2 backpressure.  Several streams of one connection waiting for the same socket to
drain must each be woken; no stream may stall while its peer grants window (RFC 9113 section 5.2).

Real gRPC clients and servers (grpcio), through zero, one and two proxies (the second a mesh hop:
client-side outbound forwarding to the server-side inbound listener); a raw h2 client that stops
reading its socket for the neighbour case without gRPC's own buffering in the way.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest


CHUNK = 64 * 1024
CHUNKS = 16  # 1 MiB per stream


def _bulk_server():
    def stream(request: bytes, context):
        for i in range(CHUNKS):
            yield bytes([i]) * CHUNK

    def unary(request: bytes, context):
        return request[::-1]  # as big as the request: ~300 KB each way

    handler = grpc.method_handlers_generic_handler("test.Bulk", {
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), maximum_concurrent_rpcs=2000,
                         options=[("grpc.max_receive_message_length", 1 << 20)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture(scope="module")
def bulk_server():
    server, port = _bulk_server()
    yield port
    server.stop(0)


def _channel(entry, port):
    target = f"127.0.0.1:{port}" if entry is None else f"{entry[0]}:{entry[1]}"
    return grpc.insecure_channel(target, options=[("grpc.default_authority", f"127.0.0.1:{port}"),
                                                  ("grpc.max_receive_message_length", 1 << 20)])


@pytest.mark.parametrize("hops", [1, 2])
def test_ten_server_streams_to_a_client_that_pauses_reading_all_finish(bulk_server, proxy_chain, hops):
    entry = proxy_chain(hops)
    with _channel(entry, bulk_server) as channel:
        call = channel.unary_stream("/test.Bulk/Stream")
        received = [0] * 10
        errors: list = []

        def consume(i: int) -> None:
            try:
                for n, msg in enumerate(call(b"go", timeout=8)):
                    if n == 0:
                        time.sleep(0.5)  # the client stops reading; the proxy's writes back up
                    received[i] += len(msg)
            except grpc.RpcError as exc:
                errors.append((i, exc.code(), exc.details()))

        start = time.monotonic()
        threads = [threading.Thread(target=consume, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        elapsed = time.monotonic() - start
    assert not errors, errors
    assert received == [CHUNK * CHUNKS] * 10
    assert elapsed < 5, elapsed


def _grpc_request(sid_authority: str) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/test.Bulk/Stream"),
            (b":authority", sid_authority.encode()), (b"content-type", b"application/grpc"), (b"te", b"trailers")]


def _read_events(sock, conn, deadline: float) -> list | None:
    """The h2 events of one read from *sock*; None when it timed out (at *deadline*) or closed."""
    sock.settimeout(max(0.05, deadline - time.monotonic()))
    try:
        data = sock.recv(1 << 20)
    except TimeoutError:
        return None
    return conn.receive_data(data) if data else None


def _raw_streams_pausing(addr, authority: str, *, streams: int, pause: float, timeout: float):
    """Open *streams* gRPC server streams on one h2 connection that grants every window at once but
    does not read its socket for *pause* s (a small receive buffer, so the proxy's writes back up)."""
    import socket

    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.settimeout(timeout)
    sock.connect(addr)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: (1 << 31) - 1})
    conn.increment_flow_control_window((1 << 31) - 1 - 65535)
    message = b"\x00" + (2).to_bytes(4, "big") + b"go"
    sids = []
    for _ in range(streams):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, _grpc_request(authority))
        conn.send_data(sid, message, end_stream=True)
        sids.append(sid)
    sock.sendall(conn.data_to_send())
    time.sleep(pause)
    got = {sid: 0 for sid in sids}
    status: dict[int, bytes] = {}
    deadline = time.monotonic() + timeout
    while len(status) < streams and time.monotonic() < deadline:
        events = _read_events(sock, conn, deadline)
        if events is None:
            break
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                got[ev.stream_id] += len(ev.data)
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                status[ev.stream_id] = dict(ev.headers).get(b"grpc-status")
            elif isinstance(ev, h2.events.StreamReset):
                status[ev.stream_id] = b"reset %d" % ev.error_code
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
    sock.close()
    return got, status


@pytest.mark.parametrize("hops", [1, 2])
def test_streams_blocked_on_one_socket_all_resume_when_it_drains(bulk_server, proxy_chain, hops):
    entry = proxy_chain(hops)
    start = time.monotonic()
    got, status = _raw_streams_pausing(entry, f"127.0.0.1:{bulk_server}", streams=10, pause=0.5, timeout=6)
    elapsed = time.monotonic() - start
    assert status == {sid: b"0" for sid in got}, (status, got)
    # each message framed with its 5-byte gRPC prefix
    assert set(got.values()) == {CHUNKS * (CHUNK + 5)}
    assert elapsed < 4, elapsed


def test_many_concurrent_large_unary_calls_on_one_channel_all_complete(bulk_server, proxy_chain):
    """grpc interop's large_unary shape, many at once on one channel, through a mesh hop (the issue: a few
    hundred of 1,000 finished, the rest stalled).  The issue's 1,000 calls, each 32 KB each way rather
    than 300 KB so that the suite stays within its time (what stalled was the number of streams
    waiting, not their size)."""
    hops, calls, size = 2, 1000, 32 * 1024
    entry = proxy_chain(hops)
    with _channel(entry, bulk_server) as channel:
        unary = channel.unary_unary("/test.Bulk/Unary")
        payload = bytes(range(256)) * (size // 256)
        start = time.monotonic()
        pending = [unary.future(payload, timeout=20) for _ in range(calls)]
        results = [f.result() == payload[::-1] for f in pending]
        elapsed = time.monotonic() - start
    assert all(results)
    assert elapsed < 15, elapsed


class _SlowReadingUpstream:
    """An h2 server that grants every window at once but stops reading its socket for *pause* s once it
    has seen *streams* request heads (a small receive buffer): the proxy's uploads back up on the socket,
    the other direction of the same bug.  Answers each stream with the number of bytes it received."""

    def __init__(self, streams: int, pause: float) -> None:
        self.streams, self.pause = streams, pause
        self.port = 0

    async def start(self):
        import asyncio
        import socket

        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # inherited by accepted sockets
        sock.bind(("127.0.0.1", 0))
        self.server = await loop.create_server(lambda: _SlowReadingConnection(self), sock=sock)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.close()


class _SlowReadingConnection:
    def __init__(self, owner: _SlowReadingUpstream) -> None:
        import h2.config
        import h2.connection

        self.owner = owner
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.received: dict[int, int] = {}
        self.paused = False

    def connection_made(self, transport) -> None:
        import h2.settings

        self.transport = transport
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: (1 << 31) - 1})
        self.conn.increment_flow_control_window((1 << 31) - 1 - 65535)
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        import asyncio

        import h2.events

        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.received[ev.stream_id] = 0
            elif isinstance(ev, h2.events.DataReceived):
                self.received[ev.stream_id] += len(ev.data)
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                body = str(self.received[ev.stream_id]).encode()
                self.conn.send_headers(ev.stream_id, [(b":status", b"200"), (b"content-length", b"%d" % len(body))])
                self.conn.send_data(ev.stream_id, body, end_stream=True)
        self.transport.write(self.conn.data_to_send())
        if not self.paused and len(self.received) >= self.owner.streams:
            self.paused = True
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(self.owner.pause, self.transport.resume_reading)

    def connection_lost(self, exc) -> None:
        pass

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


def _upload(addr, authority: str, *, streams: int, size: int, timeout: float) -> dict[int, bytes]:
    """*streams* uploads of *size* bytes on one h2 connection, within the proxy's windows; each response body."""
    import socket

    import h2.config
    import h2.connection
    import h2.events

    sock = socket.create_connection(addr, timeout=timeout)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    left: dict[int, int] = {}
    for _ in range(streams):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/upload"),
                                (b":authority", authority.encode())])
        left[sid] = size
    chunk = bytes(range(256)) * 64  # 16 KiB
    bodies: dict[int, bytes] = {}
    deadline = time.monotonic() + timeout
    while len(bodies) < streams and time.monotonic() < deadline:
        for sid, n in left.items():
            while n:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, n, len(chunk))
                if window <= 0:
                    break
                conn.send_data(sid, chunk[:window], end_stream=window == n)
                n -= window
            left[sid] = n
        sock.sendall(conn.data_to_send())
        events = _read_events(sock, conn, deadline)
        if events is None:
            break
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                bodies[ev.stream_id] = bodies.get(ev.stream_id, b"") + ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                bodies[ev.stream_id] = b"reset %d" % ev.error_code
        sock.sendall(conn.data_to_send())
    sock.close()
    return bodies


def test_uploads_blocked_on_one_upstream_socket_all_resume_when_it_drains(loop_thread, proxy_chain):
    """The upstream direction: ten 1 MiB uploads on one connection to an upstream that stops reading."""
    upstream = loop_thread.run(_SlowReadingUpstream(streams=10, pause=0.5).start())
    try:
        entry = proxy_chain(1)
        start = time.monotonic()
        bodies = _upload(entry, f"127.0.0.1:{upstream.port}", streams=10, size=1 << 20, timeout=8)
        elapsed = time.monotonic() - start
        assert sorted(bodies.values()) == [b"%d" % (1 << 20)] * 10, bodies
        assert elapsed < 6, elapsed
    finally:
        loop_thread.run(upstream.stop())

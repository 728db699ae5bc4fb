"""Class 12: reset limits that punish legitimate cancellation.

The rapid-reset limit (CVE-2023-44487) counts, as hyper's ``max_pending_accept_reset_streams``
(Linkerd's stack) does, only streams the client resets before the proxy has taken them on; a
client cancelling calls it has had answers on is normal gRPC use.  Real grpcio clients and
servers; a raw h2 client for the attack itself (HEADERS + RST_STREAM pairs).
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest



@pytest.fixture(scope="module")
def grpc_server():
    def ticks(request: bytes, context):
        # A server stream: one message at once, then one every 50 ms while the client listens.
        count = int(request or b"100")
        for i in range(count):
            if not context.is_active():
                return
            yield b"tick %d" % i
            time.sleep(0.05)

    def slow(request: bytes, context):
        deadline = time.monotonic() + 3
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.02)
        return b"late"

    handler = grpc.method_handlers_generic_handler("test.Reset", {
        "Ticks": grpc.unary_stream_rpc_method_handler(ticks),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    })
    # Enough workers that every call of a test runs at once (each sleeps in its handler).
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=400), maximum_concurrent_rpcs=1000)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(0)


def _channel(entry, port):
    return grpc.insecure_channel(f"{entry[0]}:{entry[1]}", options=[("grpc.default_authority", f"127.0.0.1:{port}")])


@pytest.mark.parametrize("hops", [1, 2])
def test_calls_cancelled_after_their_first_response_neither_end_the_connection_nor_a_call_beside_them(
        grpc_server, proxy_chain, hops):
    entry = proxy_chain(hops)
    with _channel(entry, grpc_server) as channel:
        ticks = channel.unary_stream("/test.Reset/Ticks")
        long_lived = ticks(b"40", timeout=20)  # ~2 s of ticks, read by a thread beside the cancels
        seen: list[bytes] = []
        reader = threading.Thread(target=lambda: seen.extend(long_lived))
        reader.start()

        def first_then_cancel(_):
            call = ticks(b"100", timeout=10)
            first = next(call)
            call.cancel()  # RST_STREAM(CANCEL) on a stream the proxy has long taken on
            return first

        with futures.ThreadPoolExecutor(max_workers=50) as pool:
            firsts = list(pool.map(first_then_cancel, range(300)))
        assert firsts == [b"tick 0"] * 300
        reader.join(10)
        assert long_lived.code() == grpc.StatusCode.OK, (long_lived.code(), long_lived.details())
        assert len(seen) == 40
        # The same channel (its one connection) still serves.
        assert next(ticks(b"1", timeout=5)) == b"tick 0"


@pytest.mark.parametrize("hops", [1, 2])
def test_calls_sharing_one_deadline_all_end_deadline_exceeded(grpc_server, proxy_chain, hops):
    entry = proxy_chain(hops)
    with _channel(entry, grpc_server) as channel:
        slow = channel.unary_unary("/test.Reset/Slow")
        deadline = 1.0
        calls = [slow.future(b"", timeout=deadline) for _ in range(300)]
        codes = []
        for call in calls:
            try:
                call.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append((exc.code(), exc.details()) if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED
                             else exc.code())
        wrong = [c for c in codes if c != grpc.StatusCode.DEADLINE_EXCEEDED]
        assert not wrong, wrong[:5]


def _goaway_code(client, timeout: float = 5.0) -> int | None:
    """Read until the proxy's GOAWAY (its error code) or the end of the connection (None)."""
    import h2.events
    import h2.exceptions

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client.sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = client.sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return None
        if not data:
            return None
        try:
            events = client.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            return None
        for ev in events:
            if isinstance(ev, h2.events.ConnectionTerminated):
                return ev.error_code
    return None


@pytest.mark.parametrize("with_body", [False, True], ids=["bodiless", "with-body"])
def test_rapid_reset_is_still_answered_with_enhance_your_calm_and_costs_the_upstream_nothing(
        proxy, h2_upstream, with_body):
    """CVE-2023-44487: HEADERS + RST_STREAM pairs, in one write, never taken on by the proxy."""
    import h2.errors

    from .peers import H2Client

    with H2Client(proxy.outbound) as client:
        head = [(b":method", b"POST" if with_body else b"GET"), (b":path", b"/rapid"), (b":scheme", b"http"),
                (b":authority", h2_upstream.authority.encode())]
        for _ in range(400):
            sid = client.conn.get_next_available_stream_id()
            client.conn.send_headers(sid, head, end_stream=not with_body)
            client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        try:
            client.flush()
        except OSError:
            pass
        assert _goaway_code(client) == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    # Reset in the read that opened them: the upstream never heard of (almost) any of them.
    assert h2_upstream.streams_opened <= 5, h2_upstream.streams_opened


def test_streams_cancelled_once_answered_are_not_rapid_reset(proxy, grpc_server):
    """The raw-h2 neighbour of the gRPC case: 300 server streams, each reset (CANCEL) once its response
    head and first message arrived, in bursts of 100: more than the rapid-reset rate per second, and
    the connection still serves."""
    import h2.errors
    import h2.events

    from .peers import H2Client

    head = [(":method", "POST"), (":path", "/test.Reset/Ticks"), (":scheme", "http"),
            (":authority", f"127.0.0.1:{grpc_server}"), ("content-type", "application/grpc"), ("te", "trailers")]
    message = b"\x00" + (3).to_bytes(4, "big") + b"100"
    with H2Client(proxy.outbound) as client:
        for _ in range(3):
            sids = {client.request(head, body=message) for _ in range(100)}
            answered: set[int] = set()
            deadline = time.monotonic() + 10
            while answered != sids and time.monotonic() < deadline:
                client.sock.settimeout(max(0.05, deadline - time.monotonic()))
                for ev in client.conn.receive_data(client.sock.recv(65536)):
                    if isinstance(ev, h2.events.DataReceived):
                        answered.add(ev.stream_id)
                        client.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        pytest.fail(f"the proxy ended the connection: {ev.error_code} {ev.additional_data}")
                client.flush()
            assert answered == sids
            for sid in sids:
                client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            client.flush()
        sid = client.request(head, body=b"\x00" + (1).to_bytes(4, "big") + b"1")
        answer = client.answer(sid)
        assert answer is not None and answer.status == 200 and answer.body.endswith(b"tick 0")

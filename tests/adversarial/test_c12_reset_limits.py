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

from ._hb_local import chain


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
        grpc_server, hops):
    entry, proxies = chain(hops)
    try:
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
    finally:
        for p in proxies:
            p.stop()


@pytest.mark.parametrize("hops", [1, 2])
def test_calls_sharing_one_deadline_all_end_deadline_exceeded(grpc_server, hops):
    entry, proxies = chain(hops)
    try:
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
    finally:
        for p in proxies:
            p.stop()

"""The HTTP/2 protocol layer alone, per exchange: h2 (as the proxy configured it) against ngh2 (libnghttp2).

What a proxy pays per request in its HTTP/2 library is one exchange in each
role: the server role on the client's connection and the client role on the
upstream's.  This times exactly that, in memory, with no proxy code: a client
connection and a server connection exchange h2load's request (six fields,
END_STREAM) and nginx's answer (five fields and 12 bytes), ten streams per
batch, connections and HPACK tables reused.  It is the ceiling on what
tuning the proxy's use of h2 can reach, and the figure behind the question
"would a compiled HTTP/2 stack pay?".

- h2, validating: h2's own header validation and normalisation on both sides
  (what the proxy ran before meshctl_proxy.wire.h2headers);
- h2, as the proxy ran it: those off (h2headers did the checks, not timed here),
  until the proxy moved to ngh2;
- ngh2: the same exchange through libnghttp2, what the proxy runs now
  (validation included: libnghttp2 always checks received header blocks).
  h2 is a test dependency; without it only the ngh2 row is printed.

    python benches/bench_h2_stack.py                  # 20,000 exchanges per stack
    python benches/bench_h2_stack.py --exchanges 5000

Bounded: a fixed number of exchanges, in memory.
"""

from __future__ import annotations

import argparse
import os
import time

REQUEST = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"127.0.0.1:8080"),
           (b"accept-encoding", b"gzip, deflate"), (b"user-agent", b"h2load nghttp2/1.52.0")]
RESPONSE = [(b":status", b"200"), (b"server", b"nginx/1.22.1"), (b"date", b"Fri, 27 Nov 2026 16:00:00 GMT"),
            (b"content-type", b"text/plain"), (b"content-length", b"12")]
BODY = b"hello world\n"
BATCH = 10


def bench_h2(exchanges: int, *, validate: bool) -> float:
    import h2.config
    import h2.connection
    import h2.events

    import hpack.hpack

    # hpack logs every field at DEBUG through its module logger; the proxy silenced it while it ran h2.
    hpack.hpack.log = h2.config.DummyLogger()

    def config(client_side: bool) -> h2.config.H2Configuration:
        return h2.config.H2Configuration(client_side=client_side, header_encoding=None,
                                         validate_inbound_headers=validate, normalize_inbound_headers=validate,
                                         validate_outbound_headers=validate, normalize_outbound_headers=validate)

    client, server = h2.connection.H2Connection(config(True)), h2.connection.H2Connection(config(False))
    client.initiate_connection()
    server.initiate_connection()
    for _ in range(2):
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
    client.increment_flow_control_window(1 << 30)
    server.increment_flow_control_window(1 << 30)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    done, received = 0, 0
    t0 = time.process_time()
    while done < exchanges:
        for _ in range(BATCH):
            client.send_headers(client.get_next_available_stream_id(), REQUEST, end_stream=True)
        for ev in server.receive_data(client.data_to_send()):
            if type(ev) is h2.events.RequestReceived:
                server.send_headers(ev.stream_id, RESPONSE)
                server.send_data(ev.stream_id, BODY, end_stream=True)
        for ev in client.receive_data(server.data_to_send()):
            if type(ev) is h2.events.DataReceived:
                received += len(ev.data)
                client.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif type(ev) is h2.events.StreamEnded:
                done += 1
        server.receive_data(client.data_to_send())
    elapsed = time.process_time() - t0
    assert received == done * len(BODY), "not every body arrived"
    return elapsed / done * 1e6


def bench_ngh2(exchanges: int) -> float:
    from ngh2 import Connection, Role
    from ngh2 import events

    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    client.initiate_connection()
    server.initiate_connection()
    for _ in range(3):
        server.receive_data(client.data_to_send())
        server.events()
        client.receive_data(server.data_to_send())
        client.events()
    done, received = 0, 0
    t0 = time.process_time()
    while done < exchanges:
        for _ in range(BATCH):
            client.send_request(REQUEST, end_stream=True)
        server.receive_data(client.data_to_send())
        for ev in server.events():
            if type(ev) is events.RequestReceived:
                server.send_response(ev.stream_id, RESPONSE)
                server.send_data(ev.stream_id, BODY, end_stream=True)
        client.receive_data(server.data_to_send())
        for ev in client.events():
            if type(ev) is events.DataReceived:
                received += len(ev.data)
            elif type(ev) is events.StreamClosed:
                done += 1
        server.receive_data(client.data_to_send())
        server.events()
    elapsed = time.process_time() - t0
    assert received == done * len(BODY), "not every body arrived"
    return elapsed / done * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exchanges", type=int, default=20000)
    args = ap.parse_args()
    print(f"HTTP/2 protocol layer, one exchange in each role, {args.exchanges} exchanges, "
          f"load average {os.getloadavg()[0]:.2f}")
    import ngh2

    ng = bench_ngh2(args.exchanges)
    try:
        import h2  # noqa: F401
    except ImportError:
        print(f"  ngh2 {ngh2.__version__:<21}: {ng:6.1f} us CPU per exchange (h2 not installed: no comparison)")
        return
    h2_validating = bench_h2(args.exchanges, validate=True)
    h2_proxy = bench_h2(args.exchanges, validate=False)
    print(f"  h2, validating            : {h2_validating:6.1f} us CPU per exchange")
    print(f"  h2, as the proxy ran it   : {h2_proxy:6.1f} us CPU per exchange")
    print(f"  ngh2 {ngh2.__version__:<21}: {ng:6.1f} us CPU per exchange ({h2_proxy / ng:.0f}x less than h2)")


if __name__ == "__main__":
    main()

"""Independent peers for the adversarial suite: they record what the proxy really sends.

Nothing here uses the proxy's own parsers.  The upstreams parse with h11 and
h2 (independent HTTP/1.1 and HTTP/2 implementations) and keep the raw bytes
too, so a test asserts what the upstream *received*: how many requests it
read out of one connection (request smuggling shows as one request more),
which header names and spellings reached it, whether it saw a Host.  The
clients are raw sockets (HTTP/1) or an h2 state machine over a raw socket, so
they can send what polite clients never would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time

import h11

from proxy.conftest import ProxyProcess
from proxy.conftest import wait_for as wait_until  # noqa: F401 (re-exported for the tests)


# --- upstreams -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class Received:
    """One request as the upstream parsed it.  *headers* keep the names' spelling as they arrived."""

    connection: int  # which accepted connection (0, 1, ...) it came on
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    protocol: str  # "HTTP/1.1" or "HTTP/2"

    def names(self) -> set[str]:
        """Header names, lower-cased (HTTP field names are case-insensitive, RFC 9110 section 5.1)."""
        return {name.lower() for name, _ in self.headers}

    def get(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class _RecordingServer:
    """What both recording upstreams share: a loopback port, the requests they read, errors."""

    def __init__(self) -> None:
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.requests: list[Received] = []
        self.errors: list[str] = []
        self.connections = 0
        self.open = 0  # connections open now (the proxy's pools hold some idle)

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self):
        """Listen on a loopback ephemeral port, each connection served by ``self._conn(reader, writer)``."""
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.close()

    def clear(self) -> None:
        self.requests.clear()
        self.errors.clear()
        self.connections = 0


class RecordingUpstream(_RecordingServer):
    """An HTTP/1.1 server (h11) that answers every request ``200`` and records it, and the raw bytes.

    Each response body is ``ok <n>`` where *n* counts requests across the
    server, so a client that reads a response meant for someone else (a
    desynchronised pooled connection) can tell.  A request h11 refuses is
    answered 400 and recorded in :attr:`errors`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[bytearray] = []  # bytes received, per connection

    def clear(self) -> None:
        super().clear()
        self.raw.clear()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        self.open += 1
        raw = bytearray()
        self.raw.append(raw)
        conn = h11.Connection(h11.SERVER)
        request, body = None, bytearray()
        try:
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    self.errors.append(str(exc))
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        writer.write(conn.send(h11.Response(status_code=400, headers=[("content-length", "0"),
                                                                                      ("connection", "close")])))
                    break
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    raw += data
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    request, body = event, bytearray()
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    n = len(self.requests)
                    self.requests.append(Received(
                        index, request.method.decode(), request.target.decode(),
                        tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw_items()),
                        bytes(body), "HTTP/1.1"))
                    payload = f"ok {n}".encode()
                    writer.write(conn.send(h11.Response(status_code=200, headers=[
                        ("content-type", "text/plain"), ("content-length", str(len(payload)))])))
                    writer.write(conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage()))
                    await writer.drain()
                    if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                        break
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    break
        except (ConnectionError, h11.LocalProtocolError):
            pass
        finally:
            self.open -= 1
            writer.close()


class _H2UpstreamConnection(asyncio.Protocol):
    def __init__(self, owner: "RecordingH2Upstream") -> None:
        import h2.config
        import h2.connection

        self.owner = owner
        self.index = owner.connections
        owner.connections += 1
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.heads: dict[int, list] = {}
        self.bodies: dict[int, bytearray] = {}

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.owner.open += 1
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def connection_lost(self, exc) -> None:
        self.owner.open -= 1

    def data_received(self, data: bytes) -> None:
        import h2.events
        import h2.exceptions

        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.owner.errors.append(str(exc))
            self.transport.write(self.conn.data_to_send())
            self.transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self.owner.streams_opened += 1  # counted at once: a stream reset before its end is not recorded
                self.heads[ev.stream_id] = ev.headers
                self.bodies[ev.stream_id] = bytearray()
            elif isinstance(ev, h2.events.DataReceived):
                self.bodies[ev.stream_id] += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self._respond(ev.stream_id)
        self.transport.write(self.conn.data_to_send())

    def _respond(self, sid: int) -> None:
        head = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.heads.pop(sid)]
        pseudo = dict(kv for kv in head if kv[0].startswith(":"))
        n = len(self.owner.requests)
        self.owner.requests.append(Received(
            self.index, pseudo.get(":method", ""), pseudo.get(":path", ""),
            tuple(kv for kv in head if not kv[0].startswith(":")) + tuple(
                (k, v) for k, v in head if k == ":authority"),
            bytes(self.bodies.pop(sid)), "HTTP/2"))
        payload = f"ok {n}".encode()
        self.conn.send_headers(sid, [(b":status", b"200"), (b"content-length", str(len(payload)).encode())])
        self.conn.send_data(sid, payload, end_stream=True)


class RecordingH2Upstream(_RecordingServer):
    """An HTTP/2 (prior knowledge) server (h2) that answers every request ``200`` and records it.

    A request's recorded headers are its regular fields plus ``:authority``; :attr:`streams_opened`
    counts request heads as they arrive, also those of streams reset before their end.
    """

    def __init__(self) -> None:
        super().__init__()
        self.streams_opened = 0

    def clear(self) -> None:
        super().clear()
        self.streams_opened = 0

    async def start(self) -> "RecordingH2Upstream":
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _H2UpstreamConnection(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self


class ScriptedUpstream(_RecordingServer):
    """An upstream that answers every request head it reads with the same raw bytes (a hostile app).

    It reads up to the end of a head (``\r\n\r\n``), records the head's bytes in
    :attr:`heads`, writes :attr:`reply`, and reads on; nothing is parsed.
    """

    def __init__(self, reply: bytes = b"") -> None:
        super().__init__()
        self.reply = reply
        self.heads: list[bytes] = []

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                writer.write(self.reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()


class TcpRelay(_RecordingServer):
    """A plain TCP relay to *target*: a NAT, a port-forward, anything that hides where bytes go next.

    Counts the connections it relays, so a test can see a loop going round.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__()
        self.target = target

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


# --- clients -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def get(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


def http1_exchange(addr, data: bytes, *, timeout: float = 5.0, until_close: bool = False,
                   linger: float = 0.0) -> tuple[list[Answer], bytes]:
    """Send raw *data* on a fresh connection; the responses h11 parses back, and any bytes after them.

    Reads until the first complete response and whatever else arrives within
    *linger* seconds after it (a response nobody asked for), or with
    *until_close* until the proxy closes.
    """
    answers: list[Answer] = []
    conn = h11.Connection(h11.CLIENT)
    # h11 must be in a state that expects responses: tell it about one request we do not send through it.
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    rest = b""
    with socket.create_connection(addr, timeout=timeout) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + timeout
        status, headers, body = None, (), bytearray()
        while time.monotonic() < deadline:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                break
            if event is h11.NEED_DATA:
                if answers and not until_close:
                    if not linger:
                        break
                    sock.settimeout(linger)
                try:
                    chunk = sock.recv(65536)
                except (TimeoutError, socket.timeout, ConnectionResetError):
                    break
                conn.receive_data(chunk)
                if not chunk:
                    break
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items())
                body = bytearray()
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                answers.append(Answer(status, headers, bytes(body)))
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    break
                # Further responses on this connection are unrequested: parse them as if asked for.
                conn.start_next_cycle()
                conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
                conn.send(h11.EndOfMessage())
            elif isinstance(event, (h11.ConnectionClosed,)) or event is h11.PAUSED:
                break
        rest = conn.trailing_data[0]
    return answers, rest


class H2Client:
    """An h2 client over a raw socket (prior knowledge), able to send blocks polite clients never would."""

    def __init__(self, addr, *, validate: bool = True, timeout: float = 5.0, ssl_context=None,
                 server_name: str | None = None) -> None:
        import h2.config
        import h2.connection

        self.sock = socket.create_connection(addr, timeout=timeout)
        if ssl_context is not None:
            self.sock = ssl_context.wrap_socket(self.sock, server_hostname=server_name)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=validate,
            normalize_outbound_headers=validate))
        self.conn.initiate_connection()
        self.flush()

    def __enter__(self) -> "H2Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, headers, body: bytes = b"") -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(k.encode() if isinstance(k, str) else k, v.encode() if isinstance(v, str) else v)
                                     for k, v in headers], end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self.flush()
        return sid

    def answer(self, sid: int, timeout: float = 5.0) -> Answer | None:
        """The response on stream *sid*; None when the stream was reset or the connection ended first."""
        import h2.events
        import h2.exceptions

        status, headers, body = None, (), bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, socket.timeout, ConnectionResetError):
                return None
            if not data:
                return None
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                return None
            self.flush()
            for ev in events:
                if getattr(ev, "stream_id", None) != sid:
                    continue
                if isinstance(ev, h2.events.ResponseReceived):
                    hs = [(k.decode(), v.decode()) for k, v in ev.headers]
                    status = int(dict(hs)[":status"])
                    headers = tuple(kv for kv in hs if not kv[0].startswith(":"))
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamReset):
                    return None
                elif isinstance(ev, h2.events.StreamEnded):
                    self.flush()
                    return Answer(status, headers, bytes(body))
        return None


# --- a mesh hop: two proxies ----------------------------------------------------------------

class ForwardingProxy(ProxyProcess):
    """A proxy whose outbound side sends every request to *forward_port* on loopback: the client-side
    proxy of a mesh hop, in front of the server-side proxy's inbound listener (which routes by the
    request's authority to the application, as ``meshctl_proxy`` does without iptables)."""

    argv = ("-c", """
import os, sys
from meshctl_proxy import config
from meshctl_proxy.model import Endpoint
from meshctl_proxy.policy.router import DirectRouter
from meshctl_proxy.transport.server import run

class ForwardTo(DirectRouter):
    def select(self, target):
        return Endpoint("127.0.0.1", int(os.environ["FORWARD_PORT"]))

sys.exit(run(config.load({k: v for k, v in os.environ.items() if k.startswith("MESHCTL_PROXY_")}),
             outbound_router=ForwardTo()))
""")

    def __init__(self, forward_port: int, **env: str) -> None:
        super().__init__(FORWARD_PORT=str(forward_port), **env)


# --- a mesh: an identity service and leaves with any name ----------------------------------

class MeshAuthority:
    """A trust anchor, an issuer, and a real identity service (in the test's loop thread).

    :meth:`client_context` makes a TLS client context whose leaf carries any
    DNS SAN at all (a wildcard, a trailing dot), signed by the mesh's issuer,
    to present to a proxy's inbound side as a hostile pod would.
    """

    NAMESPACE = "adv"

    def __init__(self, workdir, loop) -> None:
        import datetime as dt

        from meshctl.identity import certs

        made = certs.utcnow() - dt.timedelta(hours=1)
        self.workdir = workdir
        self.loop = loop
        self.anchor = certs.generate_trust_anchor(now=made)
        self.issuer = certs.generate_issuer(self.anchor, now=made)
        self.registry = str(workdir / "tokens.json")
        self.server = None
        self.task = None

    async def start(self) -> "MeshAuthority":
        from meshctl.identity import certs, service, tokens
        from meshctl.meshconfig import MeshConfig

        loaded = certs.load_issuer(cert_pem=self.issuer.cert_pem, key_pem=self.issuer.key_pem,
                                   trust_anchors_pem=self.anchor.cert_pem)
        self.names = MeshConfig()
        tokens.add_token(self.registry, namespace=self.NAMESPACE, service_account="nobody")
        self.server = service.IdentityServer(service.Authority(loaded, names=self.names),
                                             tokens.LocalTokenRegistry(self.registry),
                                             service.ServiceSettings(listen_host="127.0.0.1", listen_port=0))
        _, self.port = await self.server.start()
        self.task = asyncio.get_running_loop().create_task(self.server.serve_forever())
        return self

    async def stop(self) -> None:
        self.task.cancel()

    @property
    def svc_name(self) -> str:
        from meshctl.identity import service

        return service.service_identity(self.names)

    def identity(self, service_account: str) -> str:
        return self.names.identity_name(service_account, self.NAMESPACE)

    def proxy_env(self, service_account: str) -> dict[str, str]:
        """The MESHCTL_PROXY_* settings of a meshed proxy for *service_account* (a token is minted)."""
        from meshctl.identity import tokens

        token = tokens.add_token(self.registry, namespace=self.NAMESPACE, service_account=service_account)
        token_file = self.workdir / f"token-{service_account}"
        token_file.write_text(token)
        return {
            "MESHCTL_PROXY_IDENTITY_TRUST_ANCHORS": self.anchor.cert_pem,
            "MESHCTL_PROXY_IDENTITY_SVC_ADDR": f"127.0.0.1:{self.port}",
            "MESHCTL_PROXY_IDENTITY_SVC_NAME": self.svc_name,
            "MESHCTL_PROXY_IDENTITY_TOKEN_FILE": str(token_file),
            "MESHCTL_PROXY_IDENTITY_LOCAL_NAME": self.identity(service_account),
            "MESHCTL_PROXY_IDENTITY_DIR": str(self.workdir / f"identity-{service_account}"),
        }

    def client_context(self, san: str, *, alpn: tuple[str, ...] = ("http/1.1",)):
        """A client context presenting a leaf whose one DNS SAN is *san* (whatever it says)."""
        from meshctl.identity import certs
        from meshctl_proxy.identity import tls_contexts as tls

        key = certs.new_private_key()
        leaf = certs.issue_leaf(self.issuer, public_key=key.public_key(), dns_name=san)
        tag = f"leaf-{abs(hash(san))}"
        cert_file, key_file = self.workdir / f"{tag}.crt", self.workdir / f"{tag}.key"
        cert_file.write_text(certs.cert_to_pem(leaf) + self.issuer.cert_pem)
        key_file.write_text(certs.key_to_pem(key))
        return tls.client_context(trust_anchors_pem=self.anchor.cert_pem, cert_file=str(cert_file),
                                  key_file=str(key_file), alpn=alpn)


def tls_http1_exchange(addr, ctx, server_name: str, data: bytes, *, timeout: float = 5.0) -> tuple[bytes, str | None]:
    """Send *data* over TLS (SNI *server_name*), read until the peer closes; (bytes, server's identity)."""
    import ssl

    from meshctl_proxy.identity import tls_contexts as tls

    with socket.create_connection(addr, timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as sock:
            server_id = tls.peer_identity(sock)
            sock.sendall(data)
            chunks = []
            while True:
                try:
                    chunk = sock.recv(65536)
                except (ConnectionResetError, ssl.SSLError, TimeoutError, socket.timeout):
                    break
                if not chunk:
                    break
                chunks.append(chunk)
    return b"".join(chunks), server_id

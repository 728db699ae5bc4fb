"""Mesh TLS as an ``asyncio.Transport`` over a plain one, both ends.

Inbound, protocol detection reads the ClientHello before anyone knows it is
TLS, and ``loop.start_tls`` cannot be handed bytes already taken off the
socket, so the session runs over ``ssl.MemoryBIO``: the raw transport feeds
ciphertext in (the detected prefix first) and the application protocol sees
a plain ``asyncio.Transport`` whose ``ssl_object`` extra is the verified
session.  Outbound, :func:`connect` originates TLS the same way.

Both ends use this rather than the event loop's SSL transport because it is
cheaper per record (docs/performance.md, "mTLS between proxies"): uvloop's
is Cython over the same ``ssl.MemoryBIO`` but asks ``ssl`` for a 256 KiB
object on every read and ends each read on a raised ``SSLWantReadError``
(whose message is formatted each time).  Here a read asks for one maximal
record (RFC 8446 section 5.1: 2^14 bytes of plaintext), stops as soon as the
input is consumed, and a write is one ``SSL_write`` and one raw write.
Calls go to the ``_ssl`` object under ``ssl.SSLObject`` directly: its
Python wrapper methods only forward, one frame per record saved.

Half-close: like asyncio's own SSL transport, ``can_write_eof()`` is False
(TLS 1.3 close_notify then continued reading is not something Python's ssl
peers do); a write-EOF request closes instead.
"""

from __future__ import annotations

import asyncio
import ssl

# The most plaintext one TLS record carries (RFC 8446 section 5.1).  Asking
# for exactly that per read allocates once and needs no copy out of a buffer.
_MAX_RECORD = 16384


class TlsTransport(asyncio.Transport):
    """The plaintext side of a TLS session running over a raw transport.

    Server side: ``TlsTransport(context, server_side=True, raw=transport)``
    takes over an accepted connection.  Client side: :func:`connect`.
    """

    def __init__(self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None,
                 raw: asyncio.Transport | None = None) -> None:
        super().__init__()
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=server_hostname)
        self._sslobj = self._ssl._sslobj  # type: ignore[attr-defined]  # the C object the wrapper forwards to (module docstring)
        self._raw: asyncio.Transport | None = None
        self._app: asyncio.Protocol | None = None
        self._handshaking = True
        self._handshake: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending: list[bytes] = []  # plaintext that arrived before the app protocol was attached
        self._pending_eof = False
        self._lost: tuple | None = None
        self._closing = False
        if raw is not None:
            self._raw = raw
            raw.set_protocol(_RawSide(self))

    def raw_protocol(self) -> asyncio.Protocol:
        """A protocol factory for ``loop.create_connection``: the raw side of this session."""
        return _RawSide(self)

    # --- the handshake -----------------------------------------------------------
    async def handshake(self, prefix: bytes = b"", *, timeout: float) -> ssl.SSLObject:
        """Feed *prefix* (server: the bytes detection read), complete the handshake, or raise.

        On the client side the first step writes the ClientHello.
        """
        self._feed(prefix)
        try:
            async with asyncio.timeout(timeout):
                await self._handshake
        except BaseException:
            self._raw.abort()
            raise
        return self._ssl

    def start(self, app: asyncio.Protocol, *, connection_made: bool = True) -> None:
        """Attach the application protocol and hand it what arrived meanwhile.

        *connection_made* False: the caller has already introduced the
        transport to *app* (the proxy's detection re-entry, ``begin()``).
        """
        self._app = app
        if connection_made:
            app.connection_made(self)
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            app.data_received(data)
        if self._pending_eof:
            self._deliver_eof()
        if self._lost is not None:
            app.connection_lost(self._lost[0])

    # --- ciphertext in ---------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        if data:
            self._in.write(data)
        if self._handshaking and not self._advance_handshake():
            return
        self._read_plaintext()

    def _advance_handshake(self) -> bool:
        """One handshake step; True once it is complete (the caller reads on)."""
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, ValueError) as exc:
            self._handshaking = False
            self._flush()  # let the alert (bad certificate, ...) reach the peer
            if not self._handshake.done():
                self._handshake.set_exception(exc)
            self._raw.close()
            return False
        self._handshaking = False
        self._flush()
        if not self._handshake.done():
            self._handshake.set_result(None)
        return True

    def _read_plaintext(self) -> None:
        read, incoming = self._sslobj.read, self._in
        data, more, eof = b"", None, False
        while True:
            try:
                chunk = read(_MAX_RECORD)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify
                eof = True
                break
            except ssl.SSLError:
                self._raw.abort()
                return
            if not chunk:
                eof = True
                break
            if not data:
                data = chunk
            elif more is None:
                more = [data, chunk]
            else:
                more.append(chunk)
            if not incoming.pending:
                # All consumed: skip the SSLWantReadError a further read would raise.  A read of
                # _MAX_RECORD empties its record, so nothing decrypted is left behind either
                # (and SSLObject.pending() would cost a GIL release, as every _ssl call does).
                break
        if self._out.pending:  # reads can produce records too (TLS 1.3 KeyUpdate replies)
            self._raw.write(self._out.read())
        if more is not None:
            data = b"".join(more)
        if data:
            if self._app is None:
                self._pending.append(data)
            else:
                self._app.data_received(data)
        if eof:
            self._on_eof()

    def _on_eof(self) -> None:
        if self._app is None:
            self._pending_eof = True
        else:
            self._deliver_eof()

    def _deliver_eof(self) -> None:
        keep_open = self._app.eof_received()
        if not keep_open:
            self.close()

    def _flush(self) -> None:
        if self._out.pending:
            self._raw.write(self._out.read())

    # --- asyncio.Transport, plaintext out --------------------------------------------
    def write(self, data) -> None:
        if self._closing or not data:
            return
        # Without SSL_MODE_ENABLE_PARTIAL_WRITE (Python never sets it) SSL_write takes all of
        # *data* or fails, and a MemoryBIO never refuses output: one call, one raw write.
        self._sslobj.write(data)
        self._raw.write(self._out.read())

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        self.close()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            self._ssl.unwrap()  # queues our close_notify
        except (ssl.SSLError, ValueError):
            pass
        self._flush()
        self._raw.close()

    def abort(self) -> None:
        self._closing = True
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self._raw.is_closing()

    def get_extra_info(self, name, default=None):
        if name == "ssl_object":
            return self._ssl
        if name == "peercert":
            return self._ssl.getpeercert()
        if name == "cipher":
            return self._ssl.cipher()
        return self._raw.get_extra_info(name, default)

    def set_protocol(self, protocol) -> None:
        self._app = protocol

    def get_protocol(self):
        return self._app

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_write_buffer_limits(self):
        return self._raw.get_write_buffer_limits()


async def connect(protocol_factory, host: str, port: int, context: ssl.SSLContext, *, server_hostname: str,
                  handshake_timeout: float) -> tuple[TlsTransport, asyncio.Protocol]:
    """Originate TLS to *host*:*port* (SNI *server_hostname*): ``loop.create_connection(ssl=...)``'s contract.

    A handshake that outlasts *handshake_timeout* raises ConnectionAbortedError,
    as the event loop's own ``ssl_handshake_timeout`` does.
    """
    loop = asyncio.get_running_loop()
    tls = TlsTransport(context, server_side=False, server_hostname=server_hostname)
    await loop.create_connection(tls.raw_protocol, host, port)
    try:
        await tls.handshake(timeout=handshake_timeout)
    except TimeoutError:
        raise ConnectionAbortedError(f"TLS handshake with {host}:{port} took longer than "
                                     f"{handshake_timeout} s") from None
    protocol = protocol_factory()
    tls.start(protocol)
    return tls, protocol


class _RawSide(asyncio.Protocol):
    """The raw transport's protocol: ciphertext in, events passed to the TLS side."""

    __slots__ = ("tls",)

    def __init__(self, tls: TlsTransport) -> None:
        self.tls = tls

    def connection_made(self, transport) -> None:  # client side: loop.create_connection
        self.tls._raw = transport

    def data_received(self, data: bytes) -> None:
        tls = self.tls
        if tls._handshaking:
            tls._feed(data)
        else:
            tls._in.write(data)
            tls._read_plaintext()

    def eof_received(self) -> bool:
        tls = self.tls
        if tls._handshaking:
            if not tls._handshake.done():
                tls._handshake.set_exception(ConnectionResetError("peer closed during the TLS handshake"))
            return False
        tls._on_eof()
        return True  # the app decides (through eof_received) whether to close

    def connection_lost(self, exc) -> None:
        tls = self.tls
        tls._closing = True
        if tls._handshaking:
            if not tls._handshake.done():
                tls._handshake.set_exception(exc or ConnectionResetError("connection lost during the TLS handshake"))
            return
        if tls._app is None:
            tls._lost = (exc,)
        else:
            tls._app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.tls._app is not None:
            self.tls._app.pause_writing()

    def resume_writing(self) -> None:
        if self.tls._app is not None:
            self.tls._app.resume_writing()

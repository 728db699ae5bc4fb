"""Terminate TLS on a connection whose first bytes were already read.

Inbound protocol detection reads the ClientHello before anyone knows it is
TLS, and ``loop.start_tls`` cannot be handed bytes already taken off the
socket.  So mesh TLS is terminated here with ``ssl.MemoryBIO``: the raw
transport feeds ciphertext in (the detected prefix first), the application
protocol sees a plain ``asyncio.Transport`` whose ``ssl_object`` extra is the
verified session.  It works the same on the default loop and uvloop.

Half-close: like asyncio's own SSL transport, ``can_write_eof()`` is False
(TLS 1.3 close_notify then continued reading is not something Python's ssl
peers do); a write-EOF request closes instead.
"""

from __future__ import annotations

import asyncio
import ssl

_READ = 64 * 1024
# One buffer for every connection: the event loop is single-threaded and each
# read is copied out before the next, so sharing is safe and saves memory.
_READ_BUFFER = bytearray(_READ)
_READ_VIEW = memoryview(_READ_BUFFER)


class TlsServerTransport(asyncio.Transport):
    """The plaintext side of a TLS session running over *raw*."""

    def __init__(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        super().__init__()
        self._raw = raw
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=True)
        self._app: asyncio.Protocol | None = None
        self._handshake: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending: list[bytes] = []  # plaintext that arrived before the app protocol was attached
        self._pending_eof = False
        self._lost: tuple | None = None
        self._closing = False
        self._app_write_paused = False
        raw.set_protocol(_RawSide(self))

    # --- the handshake -----------------------------------------------------------
    async def handshake(self, prefix: bytes, *, timeout: float) -> ssl.SSLObject:
        """Feed *prefix* (the bytes detection read) and complete the handshake, or raise."""
        if prefix:
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
        self._in.write(data)
        if not self._handshake.done():
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except (ssl.SSLError, ValueError) as exc:
                self._flush()  # let the alert (bad certificate, ...) reach the client
                self._handshake.set_exception(exc)
                self._raw.close()
                return
            self._flush()
            self._handshake.set_result(None)
        self._read_plaintext()

    def _read_plaintext(self) -> None:
        chunks, eof = [], False
        buf = _READ_BUFFER
        while True:
            try:
                # Into one shared buffer, copied out at once: asking ssl for a fresh
                # n-byte object per read costs an n-byte allocation per record.
                n = self._ssl.read(_READ, buf)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify
                eof = True
                break
            except ssl.SSLError:
                self._raw.abort()
                return
            if not n:
                eof = True
                break
            chunks.append(bytes(_READ_VIEW[:n]))
            if not self._in.pending and not self._ssl.pending():
                break  # all consumed: skip the SSLWantReadError a further read would raise
        self._flush()  # reads can produce records too (TLS 1.3 KeyUpdate replies)
        if chunks:
            data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
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
        view, off = memoryview(data), 0
        while off < len(view):
            off += self._ssl.write(view[off:])
        self._flush()

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


class _RawSide(asyncio.Protocol):
    """The raw transport's protocol: ciphertext in, events passed to the TLS side."""

    __slots__ = ("tls",)

    def __init__(self, tls: TlsServerTransport) -> None:
        self.tls = tls

    def data_received(self, data: bytes) -> None:
        self.tls._feed(data)

    def eof_received(self) -> bool:
        tls = self.tls
        if not tls._handshake.done():
            tls._handshake.set_exception(ConnectionResetError("client closed during the TLS handshake"))
            return False
        tls._on_eof()
        return True  # the app decides (through eof_received) whether to close

    def connection_lost(self, exc) -> None:
        tls = self.tls
        tls._closing = True
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

"""HTTP/2 wire helpers for the tests: h2's client stops at a GOAWAY, these tests want to read on."""

from __future__ import annotations


class GoawayFilter:
    """Takes GOAWAY frames out of the byte stream before h2 sees them.

    h2 closes its whole state machine on receiving GOAWAY, after which frames
    for streams still in flight are protocol errors.  RFC 9113 section 6.8 says
    those streams (ids up to last_stream_id) continue; so the tests' h2 clients
    see GOAWAY through this filter and read on.  Everything else passes through.
    """

    __slots__ = ("buf", "skip", "passing")

    def __init__(self, *, skip: int = 0) -> None:
        self.buf = b""  # an incomplete frame header, or an incomplete GOAWAY frame
        self.skip = skip  # the client preface, which is not a frame
        self.passing = 0  # bytes of the current (non-GOAWAY) frame still to pass through

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int]]]:
        buf = self.buf + data if self.buf else data
        self.buf = b""
        out: list[bytes] = []
        goaways: list[tuple[int, int]] = []
        pos, n = 0, len(buf)
        if self.skip:
            pos = min(self.skip, n)
            out.append(buf[:pos])
            self.skip -= pos
        if self.passing and pos < n:
            k = min(self.passing, n - pos)
            out.append(buf[pos:pos + k])
            self.passing -= k
            pos += k
        while pos < n:
            if n - pos < 9:
                self.buf = buf[pos:]
                break
            length = int.from_bytes(buf[pos:pos + 3], "big")
            end = pos + 9 + length
            if buf[pos + 3] == 0x07:  # GOAWAY
                if end > n:
                    self.buf = buf[pos:]
                    break
                if length >= 8:
                    last = int.from_bytes(buf[pos + 9:pos + 13], "big") & 0x7FFFFFFF
                    goaways.append((last, int.from_bytes(buf[pos + 13:pos + 17], "big")))
                pos = end
            elif end <= n:
                out.append(buf[pos:end])
                pos = end
            else:
                out.append(buf[pos:])
                self.passing = end - n
                pos = n
        return (out[0] if len(out) == 1 else b"".join(out)), goaways

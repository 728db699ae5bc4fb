"""``meshctl demo load``: what ``ab -n N -c C URL`` does, with a rate limit and a progress callback.

The walkthrough hits the gateway with ``ab -n 1000 http://GATEWAY/api/products/1``.  This is
the same measurement from Python (ApacheBench needs no install then, and the test and the
story share it): *concurrency* keep-alive HTTP/1.1 connections, *total* GET requests in all,
optionally paced to *rps* requests per second over all connections, and bounded in time.
The summary follows ab's: complete and failed requests (a failure is a request with no
response: refused, reset, timed out, malformed; ab's "Failed requests"), non-2xx responses,
requests per second and the latency percentiles ab prints.

HTTP parsing is h11's (already the destination service's), over asyncio streams.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
import urllib.parse
from collections.abc import Callable

import h11

from meshctl.errors import MeshctlError, UsageError

PERCENTILES = (50, 66, 75, 80, 90, 95, 98, 99, 100)  # ab's table
REQUEST_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class LoadResult:
    url: str
    concurrency: int
    seconds: float
    codes: dict[str, int]  # status code (or error name) -> count
    latencies_ms: tuple[float, ...]  # of the requests that got a response
    body_bytes: int
    server: str

    @property
    def complete(self) -> int:
        return len(self.latencies_ms)

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.codes.items() if not code.isdigit())

    @property
    def non_2xx(self) -> int:
        return sum(n for code, n in self.codes.items() if code.isdigit() and not code.startswith("2"))

    @property
    def success_rate(self) -> float:
        total = sum(self.codes.values())
        return sum(n for code, n in self.codes.items() if code.startswith("2")) / total if total else 0.0

    @property
    def rps(self) -> float:
        return sum(self.codes.values()) / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, p: float) -> float:
        data = sorted(self.latencies_ms)
        if not data:
            return 0.0
        # Nearest rank, as ab reports its table.
        return data[max(0, min(len(data) - 1, math.ceil(p / 100 * len(data)) - 1))]

    def to_dict(self) -> dict:
        return {"url": self.url, "concurrency": self.concurrency, "seconds": round(self.seconds, 3),
                "requests": sum(self.codes.values()), "complete": self.complete, "failed": self.failed,
                "non2xx": self.non_2xx, "successRate": round(self.success_rate, 4), "rps": round(self.rps, 2),
                "statusCodes": dict(sorted(self.codes.items())),
                "latencyMs": {f"p{p}": round(self.percentile(p), 2) for p in PERCENTILES}}

    def render(self) -> str:
        """ab's summary, the parts that mean something here."""
        u = urllib.parse.urlsplit(self.url)
        total = sum(self.codes.values())
        lines = [
            f"Server Software:        {self.server or '-'}",
            f"Server Hostname:        {u.hostname}",
            f"Server Port:            {u.port or 80}",
            "",
            f"Document Path:          {u.path or '/'}{'?' + u.query if u.query else ''}",
            f"Concurrency Level:      {self.concurrency}",
            f"Time taken for tests:   {self.seconds:.3f} seconds",
            f"Complete requests:      {total}",
            f"Failed requests:        {self.failed}",
        ]
        if self.non_2xx:
            lines.append(f"Non-2xx responses:      {self.non_2xx}")
        lines += [
            f"Requests per second:    {self.rps:.2f} [#/sec] (mean)",
            # ab's "Time per request" is concurrency x time / requests, which --rps pacing makes
            # meaningless; the mean of the measured latencies says what a request took.
            f"Time per request:       {sum(self.latencies_ms) / len(self.latencies_ms) if self.latencies_ms else 0:.3f} [ms] (mean, measured)",
            f"Status codes:           {', '.join(f'{k}: {v}' for k, v in sorted(self.codes.items()))}",
            "",
            "Percentage of the requests served within a certain time (ms)",
        ]
        for p in PERCENTILES:
            suffix = " (longest request)" if p == 100 else ""
            lines.append(f"  {p:3d}%  {self.percentile(p):6.1f}{suffix}")
        return "\n".join(lines)


def parse_url(url: str) -> tuple[str, int, str, str]:
    """(host, port, target, Host header) of an ``http://`` URL; MeshctlError otherwise."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise UsageError(f"load: expected an http://HOST[:PORT]/PATH URL, got {url!r}")
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    return u.hostname, u.port or 80, target, u.netloc


async def _load(url: str, *, total: int, concurrency: int, rps: float | None, max_seconds: float,
                on_progress: Callable[[int, int], None]) -> LoadResult:
    host, port, target, authority = parse_url(url)
    codes: dict[str, int] = {}
    latencies: list[float] = []
    server = ""
    body_bytes = 0
    next_index = 0
    done = 0
    start = time.monotonic()
    deadline = start + max_seconds

    def count(code: str) -> None:
        nonlocal done
        codes[code] = codes.get(code, 0) + 1
        done += 1
        on_progress(done, total)

    async def worker() -> None:
        nonlocal next_index, server, body_bytes
        reader = writer = conn = None
        try:
            while next_index < total and time.monotonic() < deadline:
                index = next_index
                next_index += 1
                if rps:
                    delay = start + index / rps - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                t0 = time.monotonic()
                try:
                    if conn is None or conn.our_state is not h11.IDLE:
                        if writer is not None:
                            writer.close()
                        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), REQUEST_TIMEOUT)
                        conn = h11.Connection(h11.CLIENT)
                    writer.write(conn.send(h11.Request(method="GET", target=target, headers=[
                        ("Host", authority), ("User-Agent", "meshctl-demo-load"), ("Accept", "*/*")])))
                    writer.write(conn.send(h11.EndOfMessage()))
                    status, size, srv = await asyncio.wait_for(_response(conn, reader), REQUEST_TIMEOUT)
                except (OSError, asyncio.TimeoutError, h11.ProtocolError, EOFError) as exc:
                    count(type(exc).__name__ if not isinstance(exc, asyncio.TimeoutError) else "Timeout")
                    conn = None
                    continue
                latencies.append((time.monotonic() - t0) * 1000)
                body_bytes += size
                server = server or srv
                count(str(status))
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                else:
                    conn = None
        finally:
            if writer is not None:
                writer.close()

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, total)))))
    return LoadResult(url, concurrency, time.monotonic() - start, codes, tuple(latencies), body_bytes, server)


async def _response(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[int, int, str]:
    status, size, server = 0, 0, ""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
            if not data and conn.their_state is not h11.DONE:
                raise EOFError("connection closed before the response ended")
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            server = next((v.decode(errors="replace") for k, v in event.headers if k == b"server"), "")
        elif isinstance(event, h11.Data):
            size += len(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return status, size, server
        elif isinstance(event, h11.ConnectionClosed):
            raise EOFError("connection closed")


def run_load(url: str, *, total: int, concurrency: int = 1, rps: float | None = None, max_seconds: float = 300.0,
             on_progress: Callable[[int, int], None] = lambda done, total: None,
             check: Callable[[], None] | None = None) -> LoadResult:
    """Send *total* GETs to *url* over *concurrency* connections (at most *rps* per second, at most
    *max_seconds*); *check* is called about once a second (the one-shot demo checks its processes)."""
    if total < 1:
        raise UsageError(f"load: -n must be at least 1, got {total}")
    if concurrency < 1:
        raise UsageError(f"load: -c must be at least 1, got {concurrency}")
    if concurrency > total:
        raise UsageError(f"load: cannot use concurrency {concurrency} for only {total} requests (ab refuses too)")
    if rps is not None and rps <= 0:
        raise UsageError(f"load: --rps must be positive, got {rps}")
    parse_url(url)
    last = [time.monotonic()]

    def progress(done: int, total_: int) -> None:
        on_progress(done, total_)
        if check is not None and time.monotonic() - last[0] >= 1.0:
            last[0] = time.monotonic()
            check()

    return asyncio.run(_load(url, total=total, concurrency=concurrency, rps=rps, max_seconds=max_seconds,
                             on_progress=progress))

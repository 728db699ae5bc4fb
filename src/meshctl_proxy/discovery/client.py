"""The proxy's destination client: endpoints and profiles per authority.

For each authority the outbound side asks about, one watch stream to the
destination service (``GET /v1/watch``, ``docs/destination.md``) is kept
open, and the last resolution it delivered is cached in a :class:`Watch`.
Requests read ``watch.resolution`` (no I/O on the request path); a changed
endpoint set or profile is therefore used by the next request.

When the destination service goes away the stream is retried with
exponential backoff (100 ms doubling to 5 s, with jitter, as Linkerd's
control-plane client does) and the cached resolution keeps being served:
endpoints rarely all move while the control plane restarts, and failing
every request would turn a control-plane blip into an outage.

Names outside the configured suffixes (``MESHCTL_PROXY_DESTINATION_PROFILE_SUFFIXES``)
and IPs outside the cluster networks are not asked about; neither are names
the destination service answers ``known: false`` for: the caller forwards
those to the address it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import time
import urllib.parse
from collections.abc import Iterable, Sequence

import h11

from meshctl_proxy.discovery.resolution import Resolution, ResolutionError, normalize_authority

log = logging.getLogger("meshctl_proxy.discovery.client")

BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
IDLE_TIMEOUT = 15.0  # three missed server heartbeats (5 s each): the stream is dead
INITIAL_WAIT = 1.0  # how long a first request waits for a first answer before forwarding as addressed
MAX_LINE = 4 * 1024 * 1024  # a resolution line larger than this is a broken server
# Each watch is a stream to the destination service; an application asking
# for many distinct names must not open streams without bound.  Watches idle
# this long are closed when room is needed, the least recently used first.
MAX_WATCHES = 1000
WATCH_IDLE = 60.0


def parse_suffixes(raw: str) -> tuple[str, ...]:
    """``svc.cluster.local.,example.org`` -> ('svc.cluster.local', 'example.org'); '.' means every name."""
    out = []
    for part in raw.replace(",", " ").split():
        out.append(part.strip().lower().rstrip(".") or ".")
    return tuple(out)


class Watch:
    """The cached resolution of one authority, kept current by a background stream."""

    __slots__ = ("authority", "resolution", "generation", "connected", "updated_at", "wait_until", "last_used",
                 "closed", "settled", "_changed")

    def __init__(self, authority: str) -> None:
        self.authority = authority
        self.resolution: Resolution | None = None
        self.generation = 0  # bumped on every new resolution
        self.connected = False
        self.updated_at = 0.0
        self.wait_until: float | None = None  # first requests wait for an answer until then
        self.last_used = time.monotonic()  # callers touch it; idle watches are closed
        self.closed = False  # evicted: its stream is gone, ask the client for a new watch
        # Set once the first attempt answered or failed: a first request waits
        # for that (bounded by initial_wait), not for the whole initial_wait
        # when the destination service is plainly unreachable.
        self.settled = asyncio.Event()
        self._changed = asyncio.Event()

    def _set(self, resolution: Resolution) -> None:
        if resolution == self.resolution:
            return
        self.resolution = resolution
        self.generation += 1
        self.updated_at = time.monotonic()
        self.settled.set()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_changed(self, generation: int, timeout: float | None = None) -> bool:
        """Wait until :attr:`generation` exceeds *generation*; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.generation <= generation:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                return self.generation > generation
        return True


class DestinationClient:
    def __init__(self, addr: tuple[str, int], *, suffixes: Sequence[str] = ("svc.cluster.local",),
                 networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
                 connect_timeout: float = 1.0, initial_wait: float = INITIAL_WAIT,
                 idle_timeout: float = IDLE_TIMEOUT, backoff_min: float = BACKOFF_MIN,
                 backoff_max: float = BACKOFF_MAX, max_watches: int = MAX_WATCHES,
                 rng: random.Random | None = None) -> None:
        self.addr = addr
        self.suffixes = tuple(s.lower().rstrip(".") or "." for s in suffixes)
        self.networks = tuple(networks)
        self.connect_timeout = connect_timeout
        self.initial_wait = initial_wait
        self.idle_timeout = idle_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.max_watches = max_watches
        self._rng = rng or random.Random()
        self._watches: dict[str, Watch] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self.reconnects = 0  # streams re-opened after a failure (for metrics and tests)

    @classmethod
    def from_config(cls, cfg) -> "DestinationClient":
        return cls(cfg.destination_svc_addr, suffixes=parse_suffixes(cfg.destination_profile_suffixes),
                   networks=cfg.cluster_networks, connect_timeout=cfg.outbound_connect_timeout,
                   initial_wait=cfg.destination_initial_timeout, idle_timeout=cfg.destination_idle_timeout)

    def should_resolve(self, authority: str) -> bool:
        """Is *authority* a name or address the mesh may know (else: forward as addressed)?"""
        host = normalize_authority(authority).rpartition(":")[0].strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return any(s == "." or host == s or host.endswith("." + s) for s in self.suffixes)
        return any(ip in net for net in self.networks)

    def watch(self, authority: str) -> Watch:
        """The (cached) watch of *authority*, starting its stream on first use."""
        auth = normalize_authority(authority)
        w = self._watches.get(auth)
        if w is None:
            if len(self._watches) >= self.max_watches:
                self._evict()
            w = self._watches[auth] = Watch(auth)
            self._tasks[auth] = asyncio.get_running_loop().create_task(self._run(w), name=f"destination {auth}")
        return w

    def _evict(self) -> None:
        """Close idle watches, or at least the least recently used one."""
        now = time.monotonic()
        by_age = sorted(self._watches.values(), key=lambda w: w.last_used)
        victims = [w for w in by_age if now - w.last_used > WATCH_IDLE] or by_age[:1]
        for w in victims:
            w.closed = True
            del self._watches[w.authority]
            task = self._tasks.pop(w.authority, None)
            if task is not None:
                task.cancel()  # its done task is dropped with the dict entry; nothing awaits a result

    async def resolve(self, authority: str) -> Resolution | None:
        """The current resolution of *authority*; None means "forward as addressed".

        The first call for an authority waits up to ``initial_wait`` for the
        destination service; after that, calls return the cache at once (so an
        unreachable control plane costs one wait, not one per request).
        """
        if not self.should_resolve(authority):
            return None
        w = self.watch(authority)
        w.last_used = time.monotonic()
        if w.resolution is None and not w.settled.is_set():
            now = asyncio.get_running_loop().time()
            if w.wait_until is None:
                w.wait_until = now + self.initial_wait
            if now < w.wait_until:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(w.settled.wait(), w.wait_until - now)
        res = w.resolution
        if res is None or not res.known:
            return None
        return res

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        self._tasks.clear()

    # -- the stream -----------------------------------------------------------
    async def _run(self, w: Watch) -> None:
        backoff = self.backoff_min
        first = True
        while True:
            if not first:
                self.reconnects += 1
            first = False
            try:
                got_update = await self._stream(w)
            except asyncio.CancelledError:
                raise
            except (OSError, EOFError, asyncio.TimeoutError, h11.ProtocolError, ValueError) as exc:
                log.debug("destination %s: %s: %s", w.authority, type(exc).__name__, exc)
                got_update = False
            w.connected = False
            w.settled.set()
            if got_update:
                backoff = self.backoff_min
            # Full jitter: a restarted destination service is not hit by every proxy at once.
            await asyncio.sleep(self._rng.uniform(backoff / 2, backoff))
            backoff = min(self.backoff_max, backoff * 2)

    async def _stream(self, w: Watch) -> bool:
        host, port = self.addr
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.connect_timeout)
        got_update = False
        try:
            conn = h11.Connection(h11.CLIENT)
            target = "/v1/watch?" + urllib.parse.urlencode({"authority": w.authority})
            writer.write(conn.send(h11.Request(method="GET", target=target, headers=[
                ("host", f"{host}:{port}"), ("accept", "application/x-ndjson"), ("user-agent", "meshctl-proxy")])))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            buf = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await asyncio.wait_for(reader.read(65536), self.idle_timeout)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Response):
                    if event.status_code != 200:
                        raise ValueError(f"destination service answered {event.status_code}")
                    w.connected = True
                elif isinstance(event, h11.Data):
                    buf += event.data
                    *lines, buf = buf.split(b"\n")
                    if len(buf) > MAX_LINE:
                        raise ValueError("resolution line too long")
                    for line in lines:
                        if line.strip() and self._apply(w, line):
                            got_update = True
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    raise EOFError("destination stream ended")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    def _apply(w: Watch, line: bytes) -> bool:
        doc = json.loads(line)
        if not isinstance(doc, dict) or doc.get("type") != "update":
            return False  # heartbeats (and types from a newer server) carry nothing to apply
        try:
            w._set(Resolution.from_json(doc.get("resolution")))
        except ResolutionError as exc:
            raise ValueError(str(exc)) from None
        return True

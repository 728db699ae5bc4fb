"""The three sample APIs of the demo: a gateway that calls a product API and a price API.

    python samples/apps/shop.py product --port 9090
    python samples/apps/shop.py price --port 8080 [--failure-rate 0.1] [--latency-ms 5] [--knobs FILE]
    python samples/apps/shop.py gateway --port 5000 \
        --product-api http://product-api-svc.shop.svc.cluster.local:9090 \
        --price-api http://price-api-svc.shop.svc.cluster.local:8080 \
        [--via 127.0.0.1:4140]

The gateway's upstreams default to ``$Product_API_Host`` and ``$Price_API_Host`` (the
walkthrough's names, set by samples/shop/deployments.yaml), else the URLs above.

API (samples/swagger/ describes the same):

- product: ``GET /api/products/{productId}`` -> ``{productId, name, description}``
- price: ``GET /api/prices?productId=N`` -> ``{productId, price}``
- gateway: ``GET /api/products/{productId}`` -> ``{productId, name, description, price}``

``--via`` sends the gateway's upstream calls to that address while keeping the
Host of the URL: what iptables does transparently in a pod, done explicitly so
the demo runs on plain loopback (the proxy then routes by Host, as Linkerd's
ingress mode does).  ``--failure-rate`` and ``--latency-ms`` make an API
misbehave, to show retries, timeouts and latency-aware balancing.  ``--knobs FILE``
changes them while the app runs: the file (``{"failure_rate": 0.3, "latency_ms": 50}``)
is read again whenever it changes, and ``FILE.applied`` then holds what is in effect
(``meshctl demo set`` writes the one and waits for the other).  A file, not an HTTP
endpoint, so that the knob never shows in the mesh's metrics.

Standard library only, so the apps start anywhere the project runs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PRODUCTS = {
    1: ("Espresso machine", "A 15-bar pump espresso machine with a steam wand."),
    2: ("Burr grinder", "A conical burr grinder with 40 grind settings."),
    3: ("Milk jug", "A 600 ml stainless steel milk frothing jug."),
    4: ("Tamper", "A 58 mm calibrated tamper."),
    5: ("Scale", "A coffee scale with a built-in timer."),
}
PRICES = {1: 499.0, 2: 189.5, 3: 19.9, 4: 34.0, 5: 45.25}


class ShopHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real services do
    # The head and the body go out in two writes; with Nagle's algorithm the body then
    # waits for the peer's delayed ACK (40 ms on Linux) on every kept-alive request.
    disable_nagle_algorithm = True
    server_version = "shop/1"
    app: "App"

    def log_message(self, fmt, *args):  # quiet: the proxy's metrics tell the story
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path in ("/healthz", "/ready"):
            return self.reply(200, {"status": "ok"})
        status, body = self.app.handle(url.path, urllib.parse.parse_qs(url.query))
        self.reply(status, body)

    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class App:
    def __init__(self, *, failure_rate: float = 0.0, latency_ms: float = 0.0):
        self.failure_rate = failure_rate
        self.latency_ms = latency_ms

    def handle(self, path: str, query: dict) -> tuple[int, dict]:
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        if self.failure_rate and random.random() < self.failure_rate:
            return 500, {"error": "injected failure"}
        return self.route(path, query)

    def route(self, path: str, query: dict) -> tuple[int, dict]:
        raise NotImplementedError


class ProductApi(App):
    def route(self, path, query):
        m = re.fullmatch(r"/api/products/(\d+)", path)
        if not m:
            return 404, {"error": f"no route {path}"}
        pid = int(m.group(1))
        if pid not in PRODUCTS:
            return 404, {"error": f"product {pid} not found"}
        name, description = PRODUCTS[pid]
        return 200, {"productId": pid, "name": name, "description": description}


class PriceApi(App):
    def route(self, path, query):
        if path != "/api/prices":
            return 404, {"error": f"no route {path}"}
        raw = (query.get("productId") or [""])[0]
        if not raw.isdigit():
            return 400, {"error": "productId must be a number"}
        pid = int(raw)
        if pid not in PRICES:
            return 404, {"error": f"no price for product {pid}"}
        return 200, {"productId": pid, "price": PRICES[pid]}


class Upstream:
    """One upstream API, called over a kept-alive connection per thread."""

    def __init__(self, base_url: str, via: str | None, source: str | None = None):
        url = urllib.parse.urlsplit(base_url)
        # Calls leave from the app's own address, as from a pod's IP (tap and the proxy's
        # metrics then show who called), rather than from whatever the kernel picks.
        self.source = (source, 0) if source else None
        if url.scheme != "http" or not url.hostname:
            raise SystemExit(f"shop: upstream URL must be http://HOST[:PORT], got {base_url!r}")
        self.authority = url.netloc
        target = via or url.netloc
        host, _, port = target.rpartition(":")
        self.target = (host or target, int(port) if port else 80)
        self._local = threading.local()

    def get(self, path: str) -> tuple[int, dict]:
        for attempt in (1, 2):  # a kept-alive connection may have been closed by the peer
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(*self.target, timeout=10,
                                                                     source_address=self.source)
            try:
                conn.request("GET", path, headers={"Host": self.authority})
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
                continue
            try:
                return resp.status, json.loads(body or b"{}")
            except ValueError:
                return resp.status, {"error": body.decode(errors="replace")[:200]}
        raise AssertionError("unreachable")


class GatewayApi(App):
    def __init__(self, *, product: Upstream, price: Upstream, **kw):
        super().__init__(**kw)
        self.product, self.price = product, price

    def route(self, path, query):
        m = re.fullmatch(r"/api/products/(\d+)", path)
        if not m:
            return 404, {"error": f"no route {path}"}
        pid = m.group(1)
        try:
            pstatus, product = self.product.get(f"/api/products/{pid}")
            if pstatus != 200:
                return (404 if pstatus == 404 else 502), {"error": f"product-api answered {pstatus}", "upstream": product}
            cstatus, price = self.price.get(f"/api/prices?productId={pid}")
            if cstatus != 200:
                return (404 if cstatus == 404 else 502), {"error": f"price-api answered {cstatus}", "upstream": price}
        except OSError as exc:
            return 502, {"error": f"upstream unreachable: {exc}"}
        return 200, {**product, "price": price["price"]}


class ShopServer(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: a proxy opening ten connections at once
    # overflows it, the SYNs are retried after a second, and the proxy's 100 ms connect
    # timeout towards the app answers 504 first.  Real servers listen with 128 or more.
    request_queue_size = 128
    daemon_threads = True


KNOBS_POLL_S = 0.2


def watch_knobs(app: App, path: str, *, poll: float = KNOBS_POLL_S) -> threading.Thread:
    """Apply the knobs file to *app* now and whenever it changes (a daemon thread)."""
    def apply_once(stamp):
        try:
            st = os.stat(path)
        except OSError:
            return stamp
        if (st.st_mtime_ns, st.st_size, st.st_ino) == stamp:
            return stamp
        try:
            with open(path) as f:
                knobs = json.load(f)
            failure_rate, latency_ms = float(knobs.get("failure_rate", 0.0)), float(knobs.get("latency_ms", 0.0))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            print(f"shop: {path}: ignored: {exc}", file=sys.stderr, flush=True)
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        app.failure_rate, app.latency_ms = failure_rate, latency_ms
        tmp = f"{path}.applied.tmp"
        with open(tmp, "w") as f:
            json.dump({"failure_rate": failure_rate, "latency_ms": latency_ms}, f)
        os.replace(tmp, f"{path}.applied")
        print(f"shop: knobs now failure_rate={failure_rate:g} latency_ms={latency_ms:g}", file=sys.stderr, flush=True)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def loop():
        stamp = None
        while True:
            stamp = apply_once(stamp)
            time.sleep(poll)

    thread = threading.Thread(target=loop, name="knobs", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="shop", description=__doc__.splitlines()[0])
    p.add_argument("api", choices=("gateway", "product", "price"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--failure-rate", type=float, default=0.0)
    p.add_argument("--latency-ms", type=float, default=0.0)
    # The walkthrough's gateway reads its upstreams from Product_API_Host and Price_API_Host
    # (samples/shop/deployments.yaml sets them, as the walkthrough's manifests do).
    p.add_argument("--product-api", default=os.environ.get("Product_API_Host")
                   or "http://product-api-svc.shop.svc.cluster.local:9090")
    p.add_argument("--price-api", default=os.environ.get("Price_API_Host")
                   or "http://price-api-svc.shop.svc.cluster.local:8080")
    p.add_argument("--via", help="send upstream calls to HOST:PORT (the meshctl-proxy outbound listener)")
    p.add_argument("--knobs", help="JSON file of failure_rate and latency_ms, re-read when it changes")
    args = p.parse_args(argv)
    knobs = {"failure_rate": args.failure_rate, "latency_ms": args.latency_ms}
    if args.api == "gateway":
        source = args.host if args.via and args.host not in ("0.0.0.0", "::") else None
        app: App = GatewayApi(product=Upstream(args.product_api, args.via, source),
                              price=Upstream(args.price_api, args.via, source), **knobs)
    else:
        app = (ProductApi if args.api == "product" else PriceApi)(**knobs)
    if args.knobs:
        watch_knobs(app, args.knobs)
    handler = type("Handler", (ShopHandler,), {"app": app})
    server = ShopServer((args.host, args.port), handler)
    print(f"shop: {args.api} API listening on {args.host}:{server.server_port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

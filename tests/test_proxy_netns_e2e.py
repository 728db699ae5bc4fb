"""Two meshed "pods" in network namespaces: the apps talk, both proxies see it.

Each pod is a namespace on the lab's bridge holding an app, a meshctl-proxy
running as uid 2102, and the rules from ``meshctl-proxy init``.  The client
app dials the server pod's address unchanged (HTTP/1.1, HTTP/2 with prior
knowledge, opaque TCP); the proof that the traffic
crossed both proxies is in their ``/metrics`` (outbound counts on the client
pod, inbound counts on the server pod, equal to what the apps exchanged) and
in the server app seeing its peer as 127.0.0.1 (the inbound proxy forwarding
over loopback) rather than the client pod's address.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netns import Lab, Pod, wait_for_listener

TESTS = Path(__file__).resolve().parent

pytestmark = pytest.mark.netns

PROXY_UID = 2102
HTTP_PORT = 8080
TCP_PORT = 9000
H2_PORT = 8443
REQUESTS = 25
TCP_PAYLOAD = 200_000

# The server pod's apps: HTTP on 8080, IPv4 and IPv6 (says who it thinks the peer is) and a
# TCP echo on 9000 that echoes until the client half-closes.
SERVER_APPS = """
import http.server, socket, socketserver, sys, threading

class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        peer = self.client_address[0].removeprefix("::ffff:")
        body = f"{self.path} from {peer}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)
        self.request.shutdown(socket.SHUT_WR)

class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

class DualStack(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

http_server = DualStack(("::", int(sys.argv[1])), Hello)
http_server.daemon_threads = True
echo_server = Server(("0.0.0.0", int(sys.argv[2])), Echo)
threading.Thread(target=echo_server.serve_forever, daemon=True).start()
http_server.serve_forever()
"""

# The client app: REQUESTS GETs over keep-alive, then one opaque TCP exchange
# (binary, client speaks first, half-close), reported as JSON.
CLIENT_APP = """
import http.client, json, os, socket, sys
host, http_port, tcp_port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
report = {"http": []}
conn = http.client.HTTPConnection(host, http_port, timeout=10)
for i in range(n):
    conn.request("GET", f"/r{i}")
    resp = conn.getresponse()
    report["http"].append([resp.status, resp.read().decode()])
conn.close()
payload = b"\\x00\\x01 not http " + os.urandom(size)
with socket.create_connection((host, tcp_port), timeout=10) as s:
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    echoed = b""
    while chunk := s.recv(65536):
        echoed += chunk
report["tcp"] = {"sent": len(payload), "echoed_equal": echoed == payload, "echoed": len(echoed)}
print(json.dumps(report))
"""

# An HTTP/2 (prior knowledge) app on H2_PORT: the proxy tests' h2 server
# (tests/proxy/apps.py), bound to the pod's wildcard address.
H2_SERVER_APP = """
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from proxy.apps import H2App, H2Server

async def main():
    owner = H2Server()
    await asyncio.get_running_loop().create_server(lambda: H2App(owner), "0.0.0.0", int(sys.argv[2]))
    await asyncio.Event().wait()

asyncio.run(main())
"""

# REQUESTS POSTs over one HTTP/2 connection; each answer carries the sha256
# of the body the server received and the :authority it saw.
H2_CLIENT_APP = """
import hashlib, json, sys, httpx
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
with httpx.Client(http1=False, http2=True, timeout=10) as c:
    for i in range(n):
        body = b"h2 body %d" % i
        r = c.post(f"http://{host}:{port}/echo?i={i}", content=body)
        out.append([r.http_version, r.status_code, r.headers["x-body-sha256"] == hashlib.sha256(body).hexdigest(),
                    r.headers["x-path"]])
print(json.dumps(out))
"""

SCRAPE = """
import sys, urllib.request
print(urllib.request.urlopen("http://127.0.0.1:4191/metrics", timeout=5).read().decode())
"""


def _start_proxy(pod: Pod, name: str) -> None:
    env = {
        "MESHCTL_PROXY_LOG_LEVEL": "warn",
        "MESHCTL_PROXY_IDENTITY_DISABLED": "true",
        "MESHCTL_PROXY_DETECT_TIMEOUT": "1s",
        "MESHCTL_PROXY_POD_NAMESPACE": "e2e",
        "MESHCTL_PROXY_POD_NAME": name,
        "MESHCTL_PROXY_WORKLOAD_KIND": "deployment",
        "MESHCTL_PROXY_WORKLOAD_NAME": name,
    }
    proc = pod.popen([sys.executable, "-m", "meshctl_proxy"], user=PROXY_UID, env=env)
    try:
        for port in (4140, 4143, 4191):
            wait_for_listener(pod, port)
    except AssertionError:
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise AssertionError(f"meshctl-proxy in {name} did not start: {err.decode()[-2000:]}") from None


def _samples(pod: Pod) -> list:
    text = pod.python(SCRAPE).stdout
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _total(samples, name: str, **labels: str) -> float:
    return sum(s.value for s in samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _wait_for(pod: Pod, check, *, timeout: float = 5.0):
    """Scrape until *check(samples)* holds (counters settle just after the last byte)."""
    end = time.monotonic() + timeout
    while True:
        samples = _samples(pod)
        if check(samples) or time.monotonic() > end:
            return samples
        time.sleep(0.05)


@pytest.fixture
def mesh(netns_lab: Lab):
    client, server = netns_lab.pod("client"), netns_lab.pod("server")
    for pod in (client, server):
        pod.run([sys.executable, "-m", "meshctl_proxy", "init", "--iptables-mode", "nft"])
    server.python_popen(SERVER_APPS, str(HTTP_PORT), str(TCP_PORT))
    server.python_popen(H2_SERVER_APP, str(TESTS), str(H2_PORT))
    for port in (HTTP_PORT, TCP_PORT, H2_PORT):
        wait_for_listener(server, port)
    _start_proxy(client, "client")
    _start_proxy(server, "server")
    return client, server


def test_http1_http2_and_tcp_cross_both_proxies(mesh):
    client, server = mesh
    out = client.python(CLIENT_APP, server.ip, str(HTTP_PORT), str(TCP_PORT), str(REQUESTS), str(TCP_PAYLOAD),
                        timeout=60).stdout
    report = json.loads(out)
    h2 = json.loads(client.python(H2_CLIENT_APP, server.ip, str(H2_PORT), str(REQUESTS), timeout=60).stdout)

    # The apps talked to each other's addresses unchanged and got real answers;
    # the server app's peer is the inbound proxy on loopback, not the client pod.
    assert report["http"] == [[200, f"/r{i} from 127.0.0.1"] for i in range(REQUESTS)]
    assert report["tcp"] == {"sent": TCP_PAYLOAD + 12, "echoed_equal": True, "echoed": TCP_PAYLOAD + 12}
    assert h2 == [["HTTP/2", 200, True, f"/echo?i={i}"] for i in range(REQUESTS)]

    # Client pod: every request left through the outbound proxy, addressed to
    # the original destination it learnt from SO_ORIGINAL_DST.
    out_samples = _wait_for(client, lambda s: _total(s, "response_total", direction="outbound") >= 2 * REQUESTS)
    assert _total(out_samples, "request_total", direction="outbound") == 2 * REQUESTS
    for port in (HTTP_PORT, H2_PORT):
        assert _total(out_samples, "request_total", direction="outbound",
                      target_addr=f"{server.ip}:{port}") == REQUESTS, port
    assert _total(out_samples, "response_total", direction="outbound", status_code="200",
                  classification="success") == 2 * REQUESTS
    assert _total(out_samples, "request_total", direction="inbound") == 0

    # Server pod: the same requests arrived through the inbound proxy.
    in_samples = _wait_for(server, lambda s: _total(s, "response_total", direction="inbound") >= 2 * REQUESTS)
    for port in (HTTP_PORT, H2_PORT):
        assert sum(s.value for s in in_samples if s.name == "request_total" and s.labels["direction"] == "inbound"
                   and s.labels["target_addr"].endswith(f":{port}")) == REQUESTS, port
    assert _total(in_samples, "request_total", direction="inbound") == 2 * REQUESTS
    assert _total(in_samples, "response_total", direction="inbound", status_code="200",
                  classification="success") == 2 * REQUESTS
    assert _total(in_samples, "request_total", direction="outbound") == 0

    # Opaque TCP: one connection through each proxy, counted per peer as
    # Linkerd does (peer="src" the side that connected, "dst" the side
    # dialled), every byte of the payload and of its echo accounted for.
    size = TCP_PAYLOAD + 12
    for pod, direction in ((client, "outbound"), (server, "inbound")):
        samples = _wait_for(pod, lambda s, d=direction: _tcp_total(s, "tcp_close_total", d, "src") >= 1
                            and _tcp_total(s, "tcp_close_total", d, "dst") >= 1)
        for peer in ("src", "dst"):
            assert _tcp_total(samples, "tcp_open_total", direction, peer) == 1, (direction, peer)
            assert _tcp_total(samples, "tcp_close_total", direction, peer) == 1, (direction, peer)
            assert _tcp_total(samples, "tcp_open_connections", direction, peer) == 0, (direction, peer)
            assert _tcp_total(samples, "tcp_read_bytes_total", direction, peer) == size, (direction, peer)
            assert _tcp_total(samples, "tcp_write_bytes_total", direction, peer) == size, (direction, peer)

    # IPv6 is not intercepted by default (init without --ipv6): it still
    # works, straight from app to app, and no proxy counts it.
    direct = client.python("import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read()"
                           ".decode())", f"http://[{server.ip6}]:{HTTP_PORT}/v6").stdout.strip()
    assert direct == f"/v6 from {client.ip6}"
    assert _total(_samples(client), "request_total") == 2 * REQUESTS
    assert _total(_samples(server), "request_total") == 2 * REQUESTS


def _tcp_total(samples, name: str, direction: str, peer: str) -> float:
    """*name* summed over the opaque connections to the echo port."""
    return sum(s.value for s in samples if s.name == name and s.labels.get("direction") == direction
               and s.labels.get("peer") == peer and s.labels.get("target_addr", "").endswith(f":{TCP_PORT}"))


# Sent from inside the server pod to its own outbound listener, addressed by
# Host only (Linkerd's ingress mode: the connection was not redirected).
INGRESS_CLIENT = """
import http.client, json, sys
host, n = sys.argv[1], int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", 4140, timeout=10)
out = []
for i in range(n):
    conn.request("GET", f"/self{i}", headers={"Host": host})
    resp = conn.getresponse()
    out.append([resp.status, resp.read().decode()])
print(json.dumps(out))
"""


def test_pod_calling_itself_through_its_proxy_crosses_the_inbound_side(mesh):
    # The outbound proxy (uid 2102) dials the pod's own IP, which leaves
    # through lo; init's redirect-non-loopback-local-traffic rule sends it to
    # the inbound listener, so the call is seen on both sides of the proxy:
    # app -> proxy(out) -> proxy(in) -> app, as in Linkerd.
    _client, server = mesh
    n = 3
    out = json.loads(server.python(INGRESS_CLIENT, f"{server.ip}:{HTTP_PORT}", str(n)).stdout)
    assert out == [[200, f"/self{i} from 127.0.0.1"] for i in range(n)]
    samples = _wait_for(server, lambda s: _total(s, "response_total", direction="inbound") >= n)
    assert _total(samples, "request_total", direction="outbound") == n
    assert _total(samples, "request_total", direction="inbound") == n

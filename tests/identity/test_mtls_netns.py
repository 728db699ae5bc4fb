"""Two meshed pods in network namespaces: their traffic is mTLS on the wire, and both sides name the peer.

A "control" pod (no proxy) runs the identity service and the destination
service (which marks the server pod's endpoint meshed with its identity).
The client app calls the server by its Service name; the client pod's
outbound proxy originates mTLS, the server pod's inbound proxy terminates
it.  tcpdump on the server pod's veth must see TLS application data and no
plaintext HTTP, and each proxy's metrics must name the other's identity.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time

import pytest

from conftest import run_cli
from meshctl.identity import tokens
from netns import Lab, Pod, wait_for_listener

pytestmark = pytest.mark.netns

PROXY_UID = 2102
HTTP_PORT = 8080
REQUESTS = 20
CLIENT_ID = "client.e2e.serviceaccount.identity.meshctl.cluster.local"
SERVER_ID = "server.e2e.serviceaccount.identity.meshctl.cluster.local"
SVC = "server.e2e.svc.cluster.local"

SERVER_APP = """
import http.server, sys
class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = f"{self.path} client-id={self.headers.get('meshctl-client-id')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Hello).serve_forever()
"""

CLIENT_APP = """
import http.client, json, sys
ip, port, host, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
conn = http.client.HTTPConnection(ip, port, timeout=10)
out = []
for i in range(n):
    conn.request("GET", f"/secret-{i}", headers={"Host": host, "meshctl-client-id": "forged"})
    resp = conn.getresponse()
    out.append([resp.status, resp.read().decode()])
print(json.dumps(out))
"""

SCRAPE = """
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:4191/metrics", timeout=5).read().decode())
"""


def _wait_ready(pod: Pod, timeout: float = 20) -> None:
    code = ("import urllib.request, sys\ntry:\n    urllib.request.urlopen('http://127.0.0.1:4191/ready', timeout=2)\n"
            "except Exception as e:\n    sys.exit(1)")
    end = time.monotonic() + timeout
    while pod.python(code, check=False).returncode != 0:
        assert time.monotonic() < end, f"proxy in {pod.name} never became ready (certificate)"
        time.sleep(0.1)


@pytest.fixture
def shared_dir():
    # Readable by the proxies' uid (pytest's tmp_path is root-only).
    d = tempfile.mkdtemp(prefix="meshctl-mtls-netns-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _proxy(pod: Pod, name: str, identity: str, control: Pod, workdir: str, registry: str) -> None:
    token_file = os.path.join(workdir, f"token-{name}")
    with open(token_file, "w") as f:
        f.write(tokens.add_token(registry, namespace="e2e", service_account=name))
    os.chmod(token_file, 0o644)
    id_dir = os.path.join(workdir, f"identity-{name}")
    os.mkdir(id_dir)
    os.chown(id_dir, PROXY_UID, PROXY_UID)
    with open(os.path.join(workdir, "ca.crt")) as f:
        anchors = f.read()
    env = {
        "MESHCTL_PROXY_LOG_LEVEL": "warn",
        "MESHCTL_PROXY_POD_NAMESPACE": "e2e", "MESHCTL_PROXY_POD_NAME": name,
        "MESHCTL_PROXY_DESTINATION_SVC_ADDR": f"{control.ip}:8086",
        "MESHCTL_PROXY_IDENTITY_SVC_ADDR": f"{control.ip}:8080",
        "MESHCTL_PROXY_IDENTITY_TRUST_ANCHORS": anchors,
        "MESHCTL_PROXY_IDENTITY_TOKEN_FILE": token_file,
        "MESHCTL_PROXY_IDENTITY_LOCAL_NAME": identity,
        "MESHCTL_PROXY_IDENTITY_DIR": id_dir,
    }
    pod.popen([sys.executable, "-m", "meshctl_proxy"], user=PROXY_UID, env=env)
    for port in (4140, 4143, 4191):
        wait_for_listener(pod, port)


def _samples(pod: Pod) -> list:
    from prometheus_client.parser import text_string_to_metric_families

    return [s for fam in text_string_to_metric_families(pod.python(SCRAPE).stdout) for s in fam.samples]


def _total(samples, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_traffic_between_meshed_pods_is_encrypted_and_names_both_peers(netns_lab: Lab, shared_dir):
    control, client, server = netns_lab.pod("control"), netns_lab.pod("client"), netns_lab.pod("server")
    assert run_cli("identity", "create", "--out-dir", shared_dir).returncode == 0
    for name in ("ca.crt", "issuer.crt"):
        os.chmod(os.path.join(shared_dir, name), 0o644)
    registry = os.path.join(shared_dir, "tokens.json")
    with open(registry, "w") as f:
        f.write('{"tokens": []}')
    dest = os.path.join(shared_dir, "destination.yaml")
    with open(dest, "w") as f:
        json.dump({"services": [{"name": "server", "namespace": "e2e", "ports": [{"port": HTTP_PORT, "endpoints": [
            {"address": f"{server.ip}:{HTTP_PORT}", "identity": SERVER_ID}]}]}]}, f)

    control.popen([sys.executable, "-m", "meshctl", "identity", "serve", "--listen", f"{control.ip}:8080",
                   "--trust-anchors-file", f"{shared_dir}/ca.crt", "--issuer-certificate-file",
                   f"{shared_dir}/issuer.crt", "--issuer-key-file", f"{shared_dir}/issuer.key",
                   "--token-registry", registry])
    control.popen([sys.executable, "-m", "meshctl", "destination", "serve", "--registry", dest,
                   "--addr", f"{control.ip}:8086"])
    wait_for_listener(control, 8080)
    wait_for_listener(control, 8086)
    for pod in (client, server):
        pod.run([sys.executable, "-m", "meshctl_proxy", "init", "--iptables-mode", "nft"])
    server.python_popen(SERVER_APP, str(HTTP_PORT))
    wait_for_listener(server, HTTP_PORT)
    _proxy(client, "client", CLIENT_ID, control, shared_dir, registry)
    _proxy(server, "server", SERVER_ID, control, shared_dir, registry)
    _wait_ready(client)
    _wait_ready(server)

    pcap = os.path.join(shared_dir, "server-eth0.pcap")
    dump = server.popen(["tcpdump", "-i", "eth0", "-U", "-s", "0", "-w", pcap, f"tcp port {HTTP_PORT}"])
    deadline = time.monotonic() + 10
    while not (os.path.exists(pcap) and os.path.getsize(pcap) >= 24):  # the pcap header: capture is open
        assert time.monotonic() < deadline and dump.poll() is None, "tcpdump did not start"
        time.sleep(0.05)
    time.sleep(0.3)

    out = json.loads(client.python(CLIENT_APP, server.ip, str(HTTP_PORT), f"{SVC}:{HTTP_PORT}", str(REQUESTS),
                                   timeout=60).stdout)
    # Every request arrived, and the app saw the verified client identity, not the forged header.
    assert out == [[200, f"/secret-{i} client-id={CLIENT_ID}"] for i in range(REQUESTS)]

    time.sleep(0.3)
    dump.send_signal(signal.SIGTERM)
    dump.wait(10)
    with open(pcap, "rb") as f:
        wire = f.read()
    assert wire.count(b"\x17\x03\x03") >= REQUESTS, "no TLS application data records on the veth"
    for plaintext in (b"GET /", b"HTTP/1.1", b"secret-", b"client-id=", b"forged"):
        assert plaintext not in wire, f"{plaintext!r} seen in clear on the server pod's veth"

    c, s = _samples(client), _samples(server)
    assert _total(c, "tcp_open_total", direction="outbound", peer="dst", tls="true", server_id=SERVER_ID) >= 1
    assert _total(c, "request_total", direction="outbound") == REQUESTS
    assert _total(s, "request_total", direction="inbound", tls="true", client_id=CLIENT_ID) == REQUESTS
    assert _total(s, "tcp_open_total", direction="inbound", peer="src", tls="true", client_id=CLIENT_ID) >= 1
    assert _total(s, "request_total", direction="inbound", tls="no_identity") == 0

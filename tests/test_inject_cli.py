"""``meshctl inject``/``uninject`` as a user runs them: inputs, ordering, failures, https."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import ssl
import threading
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

DEPLOY = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: app
        image: app:1
"""
TRUST = str(ROOT / "tests" / "golden" / "trust-anchors.pem")


def test_stdin_data_first_then_report(tmp_path: Path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "meshctl", "inject", "-"], input=DEPLOY.format(name="web").encode(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT / "src"), "NO_COLOR": "1", "PATH": "/usr/bin:/bin"})
    out = proc.stdout.decode()
    assert proc.returncode == 0
    assert out.index("meshctl.io/inject: enabled") < out.index('deployment "web" injected')
    assert out.endswith('deployment "web" injected\n')


def test_directories_are_read_recursively_in_lexical_order(tmp_path: Path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.yaml").write_text(DEPLOY.format(name="b2"))
    (tmp_path / "b" / "1.yml").write_text(DEPLOY.format(name="b1"))
    (tmp_path / "a.json").write_text(json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}))
    (tmp_path / "notes.txt").write_text("not a manifest")
    r = run_cli("inject", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ['configmap "a" skipped', 'deployment "b1" injected', 'deployment "b2" injected']
    # Sources are kept apart: the JSON document, then a separator, then each YAML file.
    assert r.stdout.count("---\n") == 2
    assert r.stdout.startswith('{"apiVersion"')


def test_nothing_is_written_when_a_later_input_fails(tmp_path: Path):
    good = tmp_path / "good.yaml"
    good.write_text(DEPLOY.format(name="web"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\n---\nb: [\n")
    r = run_cli("inject", str(good), str(bad))
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == f"Error: {bad}: document 2, line 4: did not find expected node content (while parsing a flow node)\n"


def test_missing_file_and_plain_http():
    r = run_cli("inject", "nope.yaml")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "Error: nope.yaml: no such file or directory\n")
    r = run_cli("uninject", "http://127.0.0.1:1/x.yaml")
    assert r.returncode == 2 and "plain http is refused" in r.stderr  # the argument is wrong: a usage error


def test_no_inputs_is_a_usage_error():
    r = run_cli("inject")
    assert r.returncode == 2


def test_output_json_is_a_stream_of_json_documents(tmp_path: Path):
    f = tmp_path / "two.yaml"
    f.write_text(DEPLOY.format(name="a") + "---\n" + DEPLOY.format(name="b"))
    r = run_cli("inject", "-o", "json", str(f))
    assert r.returncode == 0
    decoder, pos, objs = json.JSONDecoder(), 0, []
    while pos < len(r.stdout.rstrip()):
        obj, pos = decoder.raw_decode(r.stdout, pos)
        objs.append(obj)
        pos += 1
    assert [o["spec"]["template"]["metadata"]["annotations"] for o in objs] == [{"meshctl.io/inject": "enabled"}] * 2


def test_mesh_namespace_flows_into_manual_injection(tmp_path: Path):
    f = tmp_path / "d.yaml"
    f.write_text(DEPLOY.format(name="web"))
    r = run_cli("-L", "mesh-system", "inject", "--manual", "--ignore-cluster", "--identity-trust-anchors-file", TRUST,
                str(f))
    assert r.returncode == 0, r.stderr
    assert "meshctl.io/control-plane-ns: mesh-system" in r.stdout
    assert "meshctl-dst.mesh-system.svc.cluster.local.:8086" in r.stdout


def test_manual_without_a_cluster_fails_cleanly(tmp_path: Path):
    f = tmp_path / "d.yaml"
    f.write_text(DEPLOY.format(name="web"))
    r = run_cli("inject", "--manual", str(f), env={"KUBECONFIG": str(tmp_path / "none")})
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr.startswith(f"Error: cannot load kubeconfig {tmp_path / 'none'}") and "Traceback" not in r.stderr
    assert "--ignore-cluster" in r.stderr


def test_bad_trust_anchors_file(tmp_path: Path):
    pem = tmp_path / "x.pem"
    pem.write_text("not a certificate")
    r = run_cli("inject", "--manual", "--ignore-cluster", "--identity-trust-anchors-file", str(pem), "-")
    assert r.returncode == 1 and "no PEM certificate" in r.stderr


def test_oversized_input_is_refused_before_parsing(monkeypatch, tmp_path: Path):
    from meshctl import yamlstream
    from meshctl.cli.inject import read_inputs
    from meshctl.errors import InputError

    monkeypatch.setattr(yamlstream, "MAX_INPUT_BYTES", 100)
    f = tmp_path / "big.yaml"
    f.write_text("a: 1\n" * 100)
    ((source, data),) = read_inputs([str(f)])
    assert len(data) == 101  # read stops just past the limit
    with pytest.raises(InputError, match="input larger than"):
        yamlstream.read_text(data, source)


# --- https ---------------------------------------------------------------------------------


@pytest.fixture
def https_server(tmp_path: Path):
    """A TLS server on 127.0.0.1 with its own CA-less self-signed certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    body = DEPLOY.format(name="remote").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://127.0.0.1:9/deploy.yaml")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path != "/deploy.yaml":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert_file
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_https_url_input(https_server):
    base, cert = https_server
    r = run_cli("inject", f"{base}/deploy.yaml", env={"SSL_CERT_FILE": str(cert)})
    assert r.returncode == 0, r.stderr
    assert r.stderr == 'deployment "remote" injected\n'
    assert "meshctl.io/inject: enabled" in r.stdout


def test_https_errors_are_one_line(https_server):
    base, cert = https_server
    r = run_cli("inject", f"{base}/missing.yaml", env={"SSL_CERT_FILE": str(cert)})
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr.startswith(f"Error: {base}/missing.yaml: cannot fetch") and "404" in r.stderr
    r = run_cli("inject", f"{base}/deploy.yaml")  # certificate not trusted
    assert r.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in r.stderr


def test_https_redirect_to_plain_http_is_refused(https_server):
    base, cert = https_server
    r = run_cli("inject", f"{base}/redirect", env={"SSL_CERT_FILE": str(cert)})
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (f"Error: {base}/redirect: redirected to http://127.0.0.1:9/deploy.yaml: "
                        "plain http is refused\n")


def test_verbose_after_the_command_as_linkerd_accepts_it(tmp_path: Path):
    f = tmp_path / "d.yaml"
    f.write_text(DEPLOY.format(name="web"))
    after = run_cli("inject", "--verbose", str(f))
    before = run_cli("--verbose", "inject", str(f))
    assert after.returncode == before.returncode == 0
    assert after.stderr == before.stderr
    assert after.stderr.startswith('√ deployment "web": pods do not use host networking\n')


def test_native_sidecar_is_a_switch(tmp_path: Path):
    # linkerd's boolean flags: `--native-sidecar FILE` (a switch before a file name) and `--native-sidecar=false`.
    f = tmp_path / "d.yaml"
    f.write_text(DEPLOY.format(name="web"))
    anchors = "tests/golden/trust-anchors.pem"
    base = ["inject", "--manual", "--ignore-cluster", "--identity-trust-anchors-file", anchors]
    native = run_cli(*base, "--native-sidecar", str(f))
    assert native.returncode == 0, native.stderr
    assert "restartPolicy: Always" in native.stdout
    for off in (["--native-sidecar=false"], ["--no-native-sidecar"], ["--native-sidecar=0"]):
        r = run_cli(*base, *off, str(f))
        assert r.returncode == 0, r.stderr
        assert "restartPolicy: Always" not in r.stdout and "meshctl-proxy" in r.stdout
    r = run_cli(*base, "--native-sidecar=maybe", str(f))
    assert r.returncode == 2


def test_opaque_port_names_are_accepted_and_bad_ones_refused(tmp_path: Path):
    f = tmp_path / "d.yaml"
    f.write_text(DEPLOY.format(name="web"))
    r = run_cli("inject", "--opaque-ports", "mysql,8080-8081", str(f))
    assert r.returncode == 0, r.stderr
    assert 'config.meshctl.io/opaque-ports: "mysql,8080-8081"' in r.stdout
    r = run_cli("inject", "--opaque-ports", "My_SQL", str(f))
    assert r.returncode == 2 and "--opaque-ports" in r.stderr


def test_user_config_annotations_survive_inject_and_uninject_byte_for_byte(tmp_path: Path):
    source = ROOT / "tests" / "golden" / "inject" / "user-config" / "input.yaml"
    text = source.read_text()
    mine = [line for line in text.splitlines() if "config.meshctl.io/" in line]
    assert len(mine) == 3
    injected = run_cli("inject", str(source))
    assert injected.returncode == 0, injected.stderr
    assert all(line in injected.stdout.splitlines() for line in mine)
    (tmp_path / "i.yaml").write_text(injected.stdout)
    back = run_cli("uninject", str(tmp_path / "i.yaml"))
    assert back.returncode == 0, back.stderr
    assert back.stdout == text  # uninject(inject(x)) == x, the user's annotations included
    manual = run_cli("inject", "--manual", "--ignore-cluster", "--identity-trust-anchors-file", TRUST, str(source))
    assert manual.returncode == 0, manual.stderr
    assert all(line in manual.stdout.splitlines() for line in mine)
    assert "cpu: 250m" in manual.stdout and '- "3306"' in manual.stdout and "0.0.0.0:9991" in manual.stdout

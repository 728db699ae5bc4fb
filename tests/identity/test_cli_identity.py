"""``meshctl identity``: create, show, token, serve, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

from conftest import ROOT, SRC, run_cli
from helpers_identity import SVC_NAME, identity_settings
from meshctl.identity import certs


def test_create_writes_a_chain_that_install_accepts_and_refuses_to_overwrite(tmp_path):
    r = run_cli("identity", "create", "--out-dir", str(tmp_path), "--issuer-lifetime", "48h")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    files = {n: (tmp_path / n).read_text() for n in ("ca.crt", "ca.key", "issuer.crt", "issuer.key")}
    issuer = certs.load_issuer(cert_pem=files["issuer.crt"], key_pem=files["issuer.key"], trust_anchors_pem=files["ca.crt"])
    assert 47 * 3600 < (issuer.not_after - certs.utcnow()).total_seconds() <= 48 * 3600
    assert oct(os.stat(tmp_path / "issuer.key").st_mode & 0o777) == "0o600"
    again = run_cli("identity", "create", "--out-dir", str(tmp_path))
    assert again.returncode == 1 and again.stderr.startswith(f"Error: {tmp_path}/ca.crt: already exists")
    assert (tmp_path / "ca.crt").read_text() == files["ca.crt"]  # nothing half-written


def test_create_rejects_bad_lifetime_in_one_line(tmp_path):
    r = run_cli("identity", "create", "--out-dir", str(tmp_path), "--issuer-lifetime", "a year")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--issuer-lifetime" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_show_reads_a_file_as_text_json_and_errors_name_the_file(tmp_path):
    run_cli("identity", "create", "--out-dir", str(tmp_path))
    r = run_cli("identity", "show", "--file", str(tmp_path / "issuer.crt"))
    assert r.returncode == 0 and "subject:      CN=identity.meshctl.cluster.local" in r.stdout and "(CA)" in r.stdout
    j = json.loads(run_cli("identity", "show", "-f", str(tmp_path / "ca.crt"), "-O", "json").stdout)
    assert j[0]["subject"] == "CN=root.meshctl.cluster.local" and j[0]["is_ca"] is True
    bad = run_cli("identity", "show", "--file", str(tmp_path / "ca.key"))
    assert bad.returncode == 1 and bad.stderr == f"Error: {tmp_path}/ca.key: no PEM certificate found\n"


def test_serve_signs_for_a_registered_token_and_stops_on_sigterm(tmp_path):
    run_cli("identity", "create", "--out-dir", str(tmp_path))
    registry = str(tmp_path / "tokens.json")
    token = run_cli("identity", "token", "--registry", registry, "-n", "shop", "-s", "web").stdout.strip()
    assert len(token) > 30
    env = {**os.environ, "PYTHONPATH": str(SRC), "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshctl", "identity", "serve", "--listen", "127.0.0.1:0",
         "--trust-anchors-file", str(tmp_path / "ca.crt"), "--issuer-certificate-file", str(tmp_path / "issuer.crt"),
         "--issuer-key-file", str(tmp_path / "issuer.key"), "--token-registry", registry],
        stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        line = proc.stderr.readline()
        assert f"identity service {SVC_NAME} listening on 127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1])
        from meshctl_proxy.identity.certificates import IdentityManager

        anchor = certs.KeyPair((tmp_path / "ca.crt").read_text(), (tmp_path / "ca.key").read_text())
        mgr = IdentityManager(identity_settings(tmp_path, anchor, port, token,
                                                name="web.shop.serviceaccount.identity.meshctl.cluster.local"))
        creds = asyncio.run(mgr.refresh())
        assert creds.not_after - time.time() > 23 * 3600
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "issued 1, refused 0" in err


def test_serve_with_a_bad_issuer_fails_before_listening(tmp_path):
    run_cli("identity", "create", "--out-dir", str(tmp_path))
    r = run_cli("identity", "serve", "--trust-anchors-file", str(tmp_path / "ca.crt"),
                "--issuer-certificate-file", str(tmp_path / "ca.crt"), "--issuer-key-file", str(tmp_path / "issuer.key"),
                "--token-registry", str(tmp_path / "none.json"))
    assert r.returncode == 1 and "issuer.key: does not match the public key of" in r.stderr

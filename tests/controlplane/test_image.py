"""The container image, built and run for real with podman (marked ``image``).

No registry image can be pulled here, so the base is made the way the
Dockerfile's BASE_IMAGE argument allows: ``debootstrap --variant=minbase``
of bookworm with python3, python3-venv, iptables and ca-certificates,
imported with ``podman import``.  The project and its dependencies go in as a
wheelhouse made on the host (``pip wheel``); the build runs with
``--network none``.  podman runs rootful with ``--runtime runc`` and a
containers.conf holding ``default_ulimits = []`` (these machines refuse
RLIMIT_NPROC inside a container).

Each entry point the manifests use runs with the arguments they pass: the
init container's ``meshctl-proxy init`` programs iptables in a container with
NET_ADMIN and its own network namespace; ``meshctl-proxy`` serves traffic;
the three controllers start against the fake API server and answer.

Costs (docs/kubernetes.md): the base rootfs and the dependency wheels are
cached in ``$MESHCTL_IMAGE_CACHE`` (default ``/var/cache/meshctl-image``);
a cold run spends a few minutes in debootstrap, a warm one well under one.
Skip locally with ``-m "not image"``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import http.server
from pathlib import Path

import httpx
import pytest

from meshctl import install as core
from meshctl.identity import certs
from meshctl_proxy import config as proxy_config

# A cold cache runs debootstrap (about 3 min) and downloads the wheels (about 1.5 min) in the first
# test's setup: more than the suite's 300 s default.
pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MESHCTL_IMAGE_CACHE", "/var/cache/meshctl-image"))
BASE = "localhost/meshctl-base:bookworm"
IMAGE = "localhost/meshctl:test"
MIRROR = os.environ.get("MESHCTL_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def _run(cmd, *, env=None, timeout=900, check=True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def podman(tmp_path_factory):
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def podman(*args, **kw):
        return _run(["podman", "--runtime", "runc", *args], env=env, **kw)

    return podman


def _remove_rootfs(rootfs: Path) -> None:
    """Remove a debootstrap tree, unmounting first what a killed debootstrap left mounted in it.

    debootstrap mounts /proc (and sometimes /sys) inside the tree while it configures packages; a run
    killed there (a test timeout, a stopped session) leaves the mount behind, and the next rmtree then
    fails on every /proc file and the next debootstrap with it.  This cache outlives runs, so clean up.
    """
    prefix = str(rootfs) + "/"
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):  # deepest first
        subprocess.run(["umount", "-l", point], capture_output=True)
    shutil.rmtree(rootfs, ignore_errors=True)


def _base_image(podman) -> None:
    import fcntl

    CACHE.mkdir(parents=True, exist_ok=True)
    # Two test runs on one machine (two checkouts) must not debootstrap into the same tree at once.
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if podman("image", "exists", BASE, check=False).returncode == 0:
            return
        tarball = CACHE / "bookworm-minbase.tar"
        if not tarball.exists():
            rootfs = CACHE / "rootfs.tmp"
            _remove_rootfs(rootfs)
            start = time.monotonic()
            try:
                _run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,iptables,ca-certificates",
                      "bookworm", str(rootfs), MIRROR], timeout=1800)
                print(f"debootstrap took {time.monotonic() - start:.0f}s", file=sys.stderr)
                partial = tarball.with_suffix(".partial")
                _run(["tar", "-C", str(rootfs), "-cf", str(partial), "."])
                partial.rename(tarball)
            finally:
                _remove_rootfs(rootfs)
        podman("import", "--change", "CMD=/bin/bash", str(tarball), BASE)


def _wheelhouse(dest: Path) -> None:
    deps = CACHE / "wheelhouse"
    deps.mkdir(parents=True, exist_ok=True)
    dest.mkdir()
    pip = [sys.executable, "-m", "pip", "wheel", "-q"]
    # The project's own wheel every time (the code changes)...
    _run([*pip, "--no-deps", "--wheel-dir", str(dest), str(ROOT)], timeout=600)
    # ...its dependencies from the cache, offline when the cache has them all (a warm run asks no index).
    # Resolve from our wheel's path, never the name: PyPI has an unrelated "meshctl" with a higher
    # version, which a by-name resolve picks on a cold cache (it did, in a cold run).
    (own,) = dest.glob("meshctl-*.whl")
    # pip saves our own wheel into the cache too, and a later resolve would read the dependencies from that
    # stale copy (same file name) instead of *own*: a new dependency never reached the image.
    for stale in deps.glob("meshctl-*.whl"):
        stale.unlink()
    resolve = ["--find-links", str(deps), "--wheel-dir", str(deps), str(own)]
    if _run([*pip, "--no-index", *resolve], check=False, timeout=600).returncode != 0:
        _run([*pip, *resolve], timeout=1200)
    for w in deps.glob("*.whl"):
        if not w.name.startswith("meshctl-"):
            shutil.copy(w, dest)


@pytest.fixture(scope="session")
def image(podman, tmp_path_factory):
    _base_image(podman)
    ctx = tmp_path_factory.mktemp("build")
    shutil.copy(ROOT / "Dockerfile", ctx / "Dockerfile")
    (ctx / "samples" / "apps").mkdir(parents=True)  # the samples-shop stage's file, should a builder want it
    shutil.copy(ROOT / "samples" / "apps" / "shop.py", ctx / "samples" / "apps" / "shop.py")
    _wheelhouse(ctx / "wheelhouse")
    start = time.monotonic()
    podman("build", "--network", "none", "--build-arg", f"BASE_IMAGE={BASE}", "-t", IMAGE, str(ctx), timeout=1200)
    print(f"image build took {time.monotonic() - start:.0f}s", file=sys.stderr)
    return IMAGE


SHOP_IMAGE = "localhost/meshctl-samples-shop:test"


@pytest.fixture(scope="session")
def shop_image(podman):
    """The Dockerfile's samples-shop target, built from the repository as a user builds it.

    Cheap: the cached base and one COPY (no wheelhouse); the build runs with no network.
    """
    _base_image(podman)
    podman("build", "--network", "none", "--target", "samples-shop", "--build-arg", f"BASE_IMAGE={BASE}",
           "-t", SHOP_IMAGE, "-f", str(ROOT / "Dockerfile"), str(ROOT), timeout=600)
    return SHOP_IMAGE


def test_sample_shop_image_runs_the_walkthrough_chain(podman, shop_image):
    """The three APIs from the one image, wired as samples/shop/deployments.yaml wires them."""
    import yaml

    listing = yaml.safe_load((ROOT / "samples" / "shop" / "deployments.yaml").read_text())
    deployments = {o["metadata"]["name"]: o for o in listing["items"] if o["kind"] == "Deployment"}
    services = {o["metadata"]["name"]: o for o in listing["items"] if o["kind"] == "Service"}
    gateway = deployments["product-gateway-api"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in gateway["env"]}
    assert env == {"Product_API_Host": "http://product-api-svc.shop.svc.cluster.local:9090",
                   "Price_API_Host": "http://price-api-svc.shop.svc.cluster.local:8080"}
    assert services["product-gateway-api-svc"]["spec"]["ports"][0]["port"] == 80
    assert gateway["ports"][0]["containerPort"] == 5000
    assert {d["spec"]["template"]["spec"]["containers"][0]["image"] for d in deployments.values()} == \
        {"ghcr.io/meshctl/samples-shop:0.1.0"}
    assert podman("run", "--rm", "--entrypoint", "id", shop_image, "-u").stdout.strip() == "65534"
    ports = {name: _free_port() for name in deployments}
    names = []
    try:
        for name, deployment in deployments.items():
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            args = [a for a in container["args"]]
            args[args.index("--host") + 1] = "127.0.0.1"  # host network here, a pod's own address in a cluster
            args[args.index("--port") + 1] = str(ports[name])
            # The upstreams as the manifest names them, reached on loopback (no cluster DNS here).
            upstream = {"Product_API_Host": f"http://127.0.0.1:{ports['product-api']}",
                        "Price_API_Host": f"http://127.0.0.1:{ports['price-api']}"}
            envs = [f"-e={k}={upstream[k]}" for k in (e["name"] for e in container.get("env") or [])]
            cname = f"shop-{name}-{os.getpid()}"
            names.append(cname)
            podman("run", "-d", "--rm", "--name", cname, "--network", "host", *envs, shop_image, *args)
        deadline = time.monotonic() + 30
        while True:
            try:
                ready = all(httpx.get(f"http://127.0.0.1:{p}/ready", timeout=1).status_code == 200
                            for p in ports.values())
            except httpx.HTTPError:
                ready = False
            if ready:
                break
            assert time.monotonic() < deadline, {n: podman("logs", n, check=False).stderr[-1000:] for n in names}
            time.sleep(0.2)
        resp = httpx.get(f"http://127.0.0.1:{ports['product-gateway-api']}/api/products/2", timeout=5)
        assert resp.status_code == 200
        assert resp.json() == {"productId": 2, "name": "Burr grinder",
                               "description": "A conical burr grinder with 40 grind settings.", "price": 189.5}
    finally:
        for cname in names:
            podman("rm", "-f", cname, check=False)


@pytest.fixture(scope="session")
def rendered():
    values = core.install_values(ha=False, files=[], sets=[])
    certificates = core.make_certificates(values, namespace="meshctl")
    return certificates, core.render_control_plane(values, namespace="meshctl", certificates=certificates)


def _deployment(objs, name):
    return next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runs_as_non_root_with_the_cli(podman, image):
    out = podman("run", "--rm", image, "sh", "-c", "id -u; id -g; meshctl version --client; meshctl-proxy --version")
    uid, gid, cli, proxy = out.stdout.split("\n")[:4]
    assert uid == "2103" and gid == "2103"
    assert cli == "Client version: 0.1.0" and proxy == "meshctl-proxy 0.1.0"
    # The templates and CRDs ship as package data in the wheel.
    rendered = json.loads(podman("run", "--rm", image, "meshctl", "install", "--ignore-cluster", "-o", "json").stdout)
    assert {o["kind"] for o in rendered["items"]} >= {"Namespace", "Deployment", "MutatingWebhookConfiguration"}
    crds = podman("run", "--rm", image, "meshctl", "install", "--crds").stdout
    assert "serviceprofiles.meshctl.io" in crds


def test_init_container_programs_iptables_in_its_own_network_namespace(podman, image, rendered):
    _, objs = rendered
    init = _deployment(objs, "meshctl-destination")["spec"]["template"]["spec"]["initContainers"][0]
    assert init["name"] == "meshctl-init"
    argv = list(init.get("command") or []) + list(init.get("args") or [])
    caps = init["securityContext"]["capabilities"]["add"]
    cmd = " ".join(f"'{a}'" for a in argv)
    out = podman("run", "--rm", "--network", "none", "--user", str(init["securityContext"].get("runAsUser", 0)),
                 *[f"--cap-add={c}" for c in caps], image, "sh", "-c", f"{cmd} && iptables-save -t nat")
    assert ":PROXY_INIT_REDIRECT" in out.stdout and ":PROXY_INIT_OUTPUT" in out.stdout
    assert "--to-ports 4143" in out.stdout and "--to-ports 4140" in out.stdout
    assert "--uid-owner 2102" in out.stdout
    # Without NET_ADMIN the same command is refused, and says so.
    denied = podman("run", "--rm", "--network", "none", "--user", "0", "--cap-drop=ALL", image, "sh", "-c", cmd,
                    check=False)
    assert denied.returncode != 0


class _Backend(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from the backend\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_proxy_serves_traffic(podman, image, rendered):
    _, objs = rendered
    template = _deployment(objs, "meshctl-destination")["spec"]["template"]["spec"]
    proxy = next(c for c in template["initContainers"] if c["name"] == "meshctl-proxy")
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    outbound, inbound, admin, control = (_free_port() for _ in range(4))
    env = {e["name"]: e["value"] for e in proxy["env"] if "value" in e}
    # Host network instead of a pod: loopback listeners, no identity service or destination to reach.
    env.update({
        "MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": f"127.0.0.1:{outbound}", "MESHCTL_PROXY_INBOUND_LISTEN_ADDR":
        f"127.0.0.1:{inbound}", "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": f"127.0.0.1:{admin}",
        "MESHCTL_PROXY_CONTROL_LISTEN_ADDR": f"127.0.0.1:{control}", "MESHCTL_PROXY_IDENTITY_DISABLED": "true",
        "MESHCTL_PROXY_DESTINATION_SVC_ADDR": "127.0.0.1:1", "MESHCTL_PROXY_POD_NAME": "image-test",
        "MESHCTL_PROXY_POD_NAMESPACE": "meshctl", "MESHCTL_PROXY_POD_SERVICE_ACCOUNT": "meshctl-destination"})
    env.pop("MESHCTL_PROXY_IDENTITY_LOCAL_NAME", None)
    name = f"meshctl-proxy-test-{os.getpid()}"
    args = ["run", "-d", "--rm", "--name", name, "--network", "host",
            "--user", str(proxy["securityContext"]["runAsUser"])]
    for k, v in env.items():
        args += ["-e", f"{k}={v}"]
    podman(*args, image, *(proxy.get("command") or ["meshctl-proxy"]), *(proxy.get("args") or []))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, podman("logs", name, check=False).stderr
            time.sleep(0.2)
        resp = httpx.get(f"http://127.0.0.1:{outbound}/", headers={"Host": f"127.0.0.1:{backend.server_port}"},
                         timeout=5)
        assert resp.status_code == 200 and resp.text == "hello from the backend\n"
        metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=5).text
        assert "request_total" in metrics
    finally:
        podman("rm", "-f", name, check=False)
        backend.shutdown()


def _mount_dir(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    d = tmp_path / name
    d.mkdir()
    d.chmod(0o755)
    for fname, text in files.items():
        (d / fname).write_text(text)
        (d / fname).chmod(0o644)  # the controllers run as 2103
    return d


def test_controllers_start_and_answer(podman, image, rendered, kube, tmp_path):
    certificates, objs = rendered
    kube.put_all(core.render_crds())
    kube.put_all(objs)
    tmp_path.chmod(0o755)
    kubedir = _mount_dir(tmp_path, "kube", {"config": kube.kubeconfig(tmp_path / "kc").read_text()})
    secret = next(o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == core.ISSUER_SECRET)
    issuer = _mount_dir(tmp_path, "issuer", {k: base64.b64decode(v).decode() for k, v in secret["data"].items()})
    tls = _mount_dir(tmp_path, "tls", {"tls.crt": certificates.webhook_crt_pem, "tls.key": certificates.webhook_key_pem})
    mounts = {"destination": [], "identity": [f"{issuer}:{core.ISSUER_DIR}:ro"],
              "proxy-injector": [f"{tls}:{core.WEBHOOK_TLS_DIR}:ro"]}
    ports, names = {}, []
    try:
        for component in core.COMPONENTS:
            container = _deployment(objs, f"meshctl-{component}")["spec"]["template"]["spec"]["containers"][0]
            port = ports[component] = _free_port()
            argv = [a.replace("0.0.0.0:", f"127.0.0.1:{port}#").split("#")[0] if "0.0.0.0:" in a else a
                    for a in container["command"]]
            argv.insert(1, "--kubeconfig=/kube/config")
            name = f"meshctl-{component}-test-{os.getpid()}"
            names.append(name)
            volumes = [f"{kubedir}:/kube:ro", *mounts[component]]
            podman("run", "-d", "--rm", "--name", name, "--network", "host",
                   "--user", str(container["securityContext"]["runAsUser"]),
                   *[f"-v={v}" for v in volumes], image, *argv)
        deadline = time.monotonic() + 45
        pending = set(core.COMPONENTS)
        while pending:
            for component in sorted(pending):
                if _answers(component, ports[component], certificates):
                    pending.discard(component)
            if pending:
                assert time.monotonic() < deadline, {n: podman("logs", n, check=False).stderr[-2000:] for n in names}
                time.sleep(0.3)
    finally:
        for name in names:
            podman("rm", "-f", name, check=False)


def _answers(component: str, port: int, certificates) -> bool:
    try:
        if component == "proxy-injector":
            ctx = ssl.create_default_context(cadata=certificates.webhook_ca_pem)
            with httpx.Client(verify=ctx, timeout=2) as client:
                return client.get(f"https://127.0.0.1:{port}/ready",
                                  extensions={"sni_hostname": core.webhook_dns_name("meshctl")}).status_code == 200
        if component == "identity":
            # The identity service serves TLS 1.3 with its own certificate, chained to the trust anchor.
            ctx = ssl.create_default_context(cadata=certificates.trust_anchors_pem)
            ctx.check_hostname = False
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                with ctx.wrap_socket(raw) as tls:
                    return tls.version() == "TLSv1.3"
        # destination: resolves the control plane's own Service, read from the (fake) API server.
        resp = httpx.get(f"http://127.0.0.1:{port}/v1/resolve",
                         params={"authority": "meshctl-dst.meshctl.svc.cluster.local:8086"}, timeout=2)
        return resp.status_code == 200 and resp.json().get("known") is True
    except (OSError, httpx.HTTPError, ssl.SSLError):
        return False

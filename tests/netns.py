"""A tiny lab of test "pods": network namespaces joined through a bridge.

    with Lab() as lab:
        a = lab.pod("a")                 # namespace with eth0 = 198.18.0.2/24
        b = lab.pod("b")                 # namespace with eth0 = 198.18.0.3/24
        srv = b.popen(["python3", "-m", "http.server", "8080"])
        a.run(["curl", f"http://{b.ip}:8080/"])

Topology: every pod has ``lo`` and ``eth0``; ``eth0`` is one end of a veth
pair whose other end sits in the lab's own bridge namespace, enslaved to a
bridge there.  The bridge namespace has no other interface, so nothing a test
sends can leave the lab: there is no route to the host's interfaces.  The
host's own namespace is never touched beyond ``ip netns add``/``del`` (the
veth pairs are created inside the namespaces with ``ip -n``).

Addresses come from 198.18.0.0/15 (RFC 2544, set aside for benchmarking
tests) and the ULA prefix fd6d:6573:6873::/64; every lab lives in its own
namespaces, so concurrent labs may reuse them without colliding.  Namespace
names carry the creating process's pid, so parallel runs never share a name
and a later run can recognise (and remove) namespaces left by a dead one.

Cleanup is guaranteed by the context manager (and the ``netns_lab`` fixture in
conftest.py): processes started through the lab are killed by process group,
anything else still inside a namespace is killed by ``ip netns pids``, then
the namespaces are deleted.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PREFIX = "mct"  # meshctl test
NETNS_DIR = Path("/var/run/netns")
V4_NET = ipaddress.ip_network("198.18.0.0/24")
V6_NET = ipaddress.ip_network("fd6d:6573:6873::/64")
_counter = itertools.count()
SRC = Path(__file__).resolve().parent.parent / "src"


def default_env(extra: dict | None = None) -> dict[str, str]:
    """The test's environment with this checkout's ``src/`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONDONTWRITEBYTECODE": "1"}
    env.update(extra or {})
    return env


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_processes(name: str) -> None:
    for _ in range(20):
        out = _ip("netns", "pids", name, check=False).stdout.split()
        if not out:
            return
        for pid in out:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.05)


def _delete_namespace(name: str) -> None:
    _kill_namespace_processes(name)
    _ip("netns", "del", name, check=False)


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces left behind by test runs whose process is gone."""
    removed = []
    if not NETNS_DIR.is_dir():
        return removed
    for entry in NETNS_DIR.iterdir():
        # Names look like mct<pid>-<lab>-<pod>.
        head = entry.name.split("-", 1)[0]
        if not head.startswith(PREFIX) or not head[len(PREFIX):].isdigit():
            continue
        if not _pid_alive(int(head[len(PREFIX):])):
            _delete_namespace(entry.name)
            removed.append(entry.name)
    return removed


class Namespace:
    """One network namespace; runs commands inside it with ``ip netns exec``."""

    def __init__(self, lab: "Lab", name: str) -> None:
        self.lab = lab
        self.name = name

    def _argv(self, argv: list[str], user: int | None) -> list[str]:
        prefix = ["ip", "netns", "exec", self.name]
        if user is not None:
            # setpriv (util-linux) drops to the uid/gid without a login shell or
            # a passwd entry, which uid 2102 does not have.  The interpreter may
            # live under /root (pyenv, 0700), so the process keeps one ambient
            # capability, CAP_DAC_READ_SEARCH, to read it; it changes nothing
            # about networking (iptables' owner match sees uid 2102).
            prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
                       "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
        return prefix + argv

    def run(self, argv: list[str], *, user: int | None = None, check: bool = True, timeout: float = 30,
            input: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(self._argv(argv, user), capture_output=True, text=True, timeout=timeout,
                              input=input, env=default_env(env))
        if check and proc.returncode != 0:
            raise AssertionError(f"in {self.name}: {' '.join(argv)} exited {proc.returncode}\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def popen(self, argv: list[str], *, user: int | None = None, env: dict | None = None,
              **kwargs) -> subprocess.Popen:
        """Start a background process; the lab kills it (and its group) at cleanup."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(self._argv(argv, user), env=default_env(env), start_new_session=True, **kwargs)
        self.lab._procs.append(proc)
        return proc

    def python(self, code: str, *args: str, user: int | None = None, **kwargs) -> subprocess.CompletedProcess:
        return self.run([sys.executable, "-c", code, *args], user=user, **kwargs)

    def python_popen(self, code: str, *args: str, user: int | None = None, **kwargs) -> subprocess.Popen:
        return self.popen([sys.executable, "-u", "-c", code, *args], user=user, **kwargs)


class Pod(Namespace):
    """A namespace with an address on the lab's bridge."""

    def __init__(self, lab: "Lab", name: str, ip: str, ip6: str) -> None:
        super().__init__(lab, name)
        self.ip = ip
        self.ip6 = ip6


class Lab:
    """A bridge namespace plus any number of pods; a context manager that cleans up."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("network-namespace tests need root (ip netns); CI runs as root")
        remove_stale_namespaces()
        self.id = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self.pods: dict[str, Pod] = {}
        self.bridge = self._add_namespace("br")
        try:
            self.bridge.run(["ip", "link", "add", "br0", "type", "bridge"])
            self.bridge.run(["ip", "link", "set", "br0", "up"])
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, suffix: str) -> Namespace:
        name = f"{self.id}-{suffix}"
        _ip("netns", "add", name)
        self._namespaces.append(name)
        ns = Namespace(self, name)
        ns.run(["ip", "link", "set", "lo", "up"])
        return ns

    def pod(self, name: str) -> Pod:
        index = len(self.pods) + 2  # .1 stays free, as a gateway would have it
        ip = str(V4_NET[index])
        ip6 = str(V6_NET[index])
        ns = self._add_namespace(name)
        pod = Pod(self, ns.name, ip, ip6)
        peer = f"v{index}"
        # Both veth ends are created from inside the pod's namespace, the peer
        # moved straight into the bridge namespace: the host never sees them.
        pod.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", self.bridge.name])
        self.bridge.run(["ip", "link", "set", peer, "master", "br0"])
        self.bridge.run(["ip", "link", "set", peer, "up"])
        # No DAD: the address is usable at once instead of after ~1 s of probing.
        pod.run(["sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"])
        pod.run(["ip", "addr", "add", f"{ip}/{V4_NET.prefixlen}", "dev", "eth0"])
        pod.run(["ip", "-6", "addr", "add", f"{ip6}/{V6_NET.prefixlen}", "dev", "eth0", "nodad"])
        pod.run(["ip", "link", "set", "eth0", "up"])
        self.pods[name] = pod
        return pod

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.communicate(timeout=5)
        for name in reversed(self._namespaces):
            _delete_namespace(name)
        self._namespaces.clear()

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_for_listener(ns: Namespace, port: int, *, timeout: float = 10) -> None:
    """Wait until something inside *ns* listens on TCP *port*.

    Asks the kernel (``ss``) instead of connecting: a probe connection would
    itself be redirected by the rules under test, and seen by the listener.
    """
    end = time.monotonic() + timeout
    while True:
        out = ns.run(["ss", "-Hltn", f"sport = :{port}"]).stdout
        if out.strip():
            return
        if time.monotonic() > end:
            raise AssertionError(f"nothing listens on port {port} in {ns.name} after {timeout}s")
        time.sleep(0.02)


# A TCP server that tells each client which port it accepted on and what
# SO_ORIGINAL_DST says, as one JSON line, then closes.  Run it as an "app"
# (nothing redirected: orig_dst is None) or in the proxy's place on 4140/4143.
REPORTER = """
import json, selectors, socket, sys
from meshctl_proxy.transport.original_dst import original_dst
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(64)
    sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        conn, peer = key.fileobj.accept()
        with conn:
            dst = original_dst(conn)
            report = {"port": conn.getsockname()[1], "orig_dst": list(dst) if dst else None, "peer": peer[0]}
            conn.sendall(json.dumps(report).encode() + b"\\n")
"""

# For each HOST PORT pair in argv: connect, and print what came back (or the
# error) as one JSON line.  One interpreter start for many probes.
PROBE = """
import json, socket, sys
for host, port in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        with socket.create_connection((host, int(port)), timeout=3) as c:
            data = b""
            while chunk := c.recv(4096):
                data += chunk
        print(data.decode().strip() or json.dumps({"error": "empty reply"}))
    except OSError as exc:
        print(json.dumps({"error": type(exc).__name__}))
"""


def probe(ns: Namespace, *targets: tuple[str, int], user: int | None = None) -> list[dict]:
    """Connect from inside *ns* (as *user*) to each target; the REPORTER replies, parsed."""
    import json

    args = [str(x) for target in targets for x in target]
    out = ns.python(PROBE, *args, user=user).stdout
    return [json.loads(line) for line in out.splitlines()]

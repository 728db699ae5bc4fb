"""``meshctl demo up|status|down``: the local mesh as daemons that outlive the command.

Everything of one demo lives in its state directory (:func:`meshctl.demo.state.state_dir`):

- ``mesh.json``: where the mesh answers (contract B, :mod:`meshctl.demo.state`), written last,
  once everything is ready; its presence means "this demo came up";
- ``processes.json``: the plan and every process started (argv, environment, pid and the
  kernel's start time of that pid, so a recycled pid is never mistaken for ours); written
  after each start, so a killed ``up`` leaves a record of what it started;
- certificates, tokens, the destination registry (``registry.json``, watched: ``demo apply``
  edits it), the apps' knobs (``knobs/``), Prometheus' data and every process' log (``logs/``).

Each process is started in its own session (``setsid``): it has its own process group, no
controlling terminal, and survives the command that started it.  ``down`` ends each group
with SIGTERM, then SIGKILL after a grace period, and removes the network namespaces of
``--netns``.  A lock file serialises ``up``, ``down`` and ``apply`` on one directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from meshctl import demo as plan_mod
from meshctl.demo import state
from meshctl.errors import MeshctlError
from meshctl_proxy.config import TAP_SVC_NAME

RECORD = "processes.json"
TAP_IDENTITY = TAP_SVC_NAME  # the identity the proxies let tap (meshctl_proxy.config)
READY_TIMEOUT = 60.0
STOP_GRACE = 5.0
# The demo is meant to stay up for days: its tokens and trust chain outlive any session.
TOKEN_LIFETIME = dt.timedelta(days=365)


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessSpec:
    """How to start one of the demo's processes and how to tell it is healthy."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()  # on top of the command's own environment
    health: str = ""  # http://... answering 200 when ready, tcp://HOST:PORT accepting, or "" (alive is enough)
    netns: str | None = None  # run inside this network namespace (--netns)
    uid: int | None = None  # drop to this uid (the proxy's, so that its own connections are not redirected)
    kind: str = "process"  # "prometheus" is started through meshctl.viz.localprom

    def to_dict(self) -> dict:
        return {"name": self.name, "argv": list(self.argv), "env": dict(self.env), "health": self.health,
                "netns": self.netns, "uid": self.uid, "kind": self.kind}

    @classmethod
    def from_dict(cls, d: dict) -> "ProcessSpec":
        return cls(d["name"], tuple(d["argv"]), tuple(d.get("env", {}).items()), d.get("health", ""), d.get("netns"),
                   d.get("uid"), d.get("kind", "process"))


@dataclasses.dataclass(frozen=True, slots=True)
class Started:
    spec: ProcessSpec
    pid: int
    start_time: int  # /proc/PID/stat field 22: tells our process from a later one with the same pid


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessStatus:
    name: str
    pid: int | None
    state: str  # running | exited | not started
    health: str  # ready | not ready | - (nothing to ask)
    address: str
    log: str


# --- processes -------------------------------------------------------------------------

def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of *pid*, None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def is_running(p: Started) -> bool:
    st = _proc_stat(p.pid)
    # A zombie has exited; only its parent's wait() is missing (init reaps it).
    return st is not None and st[1] == p.start_time and st[0] not in ("Z", "X")


def _stop_group(p: Started) -> None:
    if is_running(p):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)


def _kill_group(p: Started) -> None:
    if is_running(p):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)


def _healthy(health: str, timeout: float = 1.0) -> bool:
    if not health:
        return True
    if health.startswith("tcp://"):
        host, _, port = health[len("tcp://"):].rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                return True
        except OSError:
            return False
    import httpx

    try:
        return httpx.get(health, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _port_free(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no conflict
        try:
            s.bind((host, int(port)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _code_path() -> str:
    # The daemons run the same meshctl and meshctl_proxy as this command (a checkout or an install).
    src = str(Path(plan_mod.__file__).resolve().parents[2])
    return os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])


class LocalDemo:
    """One state directory's local mesh: bring it up, look at it, bring it down."""

    def __init__(self, dir: Path | str | None = None, *, progress: Callable[[str], None] = lambda msg: None) -> None:
        self.dir = state.state_dir(dir).resolve() if dir else state.state_dir().absolute()
        self.progress = progress
        self.started: list[Started] = []
        self.plan: plan_mod.Plan | None = None
        self.extra: dict = {}  # prometheus port, dashboard url, netns lab
        # How often Prometheus scrapes the proxies; the one-shot demo asks for 1s (short runs).
        self.scrape_interval_s = 2.0

    # --- the record ------------------------------------------------------------------

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    def _save_record(self) -> None:
        assert self.plan is not None
        doc = {"version": 1, "plan": dataclasses.asdict(self.plan), "extra": self.extra,
               "processes": [{"spec": p.spec.to_dict(), "pid": p.pid, "start_time": p.start_time} for p in self.started]}
        tmp = self.dir / f".{RECORD}.tmp"
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, self.dir / RECORD)

    def _load_record(self) -> bool:
        path = self.dir / RECORD
        try:
            doc = json.loads(path.read_text())
            self.plan = plan_mod.Plan(**doc["plan"])
            self.extra = doc.get("extra", {})
            self.started = [Started(ProcessSpec.from_dict(p["spec"]), p["pid"], p["start_time"]) for p in doc["processes"]]
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MeshctlError(f"{path}: unreadable demo record ({exc}); remove the directory {self.dir} "
                               "after stopping what runs from it") from None
        return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            f = open(self.dir / ".lock", "w")
        except OSError as exc:
            raise MeshctlError(f"demo: cannot use the state directory {self.dir}: {exc.strerror or exc}") from None
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MeshctlError(f"another meshctl demo command is working on {self.dir}") from None
            yield

    # --- starting ---------------------------------------------------------------------

    def _spawn(self, spec: ProcessSpec) -> Started:
        self.logs.mkdir(parents=True, exist_ok=True)
        if spec.kind == "prometheus":
            from meshctl.viz import localprom

            prom = localprom.start(self.dir / "prometheus", port=int(self.extra["prometheus_port"]))
            pid = prom.process.pid
        else:
            argv = list(spec.argv)
            if spec.uid is not None:
                # As tests/netns.py: setpriv drops to the uid without a passwd entry; the kept
                # CAP_DAC_READ_SEARCH lets it read an interpreter under a 0700 home.
                argv = ["setpriv", f"--reuid={spec.uid}", f"--regid={spec.uid}", "--clear-groups",
                        "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", *argv]
            if spec.netns:
                argv = ["ip", "netns", "exec", spec.netns, *argv]
            env = {**os.environ, "PYTHONPATH": _code_path(), **dict(spec.env)}
            with open(self.logs / f"{spec.name}.log", "ab") as log:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                        cwd=self.dir, start_new_session=True, close_fds=True)
            pid = proc.pid
            # The Popen object is dropped: the process belongs to its session now.  Python
            # would warn about it in __del__ only if it were still referenced with a pending
            # returncode, so forget it explicitly.
            proc.returncode = 0
        st = _proc_stat(pid)
        started = Started(spec, pid, st[1] if st else 0)
        self.started = [p for p in self.started if p.spec.name != spec.name] + [started]
        self._save_record()
        return started

    def _last_log_line(self, name: str) -> str:
        path = self.dir / "prometheus" / "prometheus.log" if name == "prometheus" else self.logs / f"{name}.log"
        try:
            lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no log"
        return lines[-1] if lines else "no output"

    def check_alive(self, *_args) -> None:
        for p in self.started:
            if not is_running(p):
                raise MeshctlError(f"demo: {p.spec.name} exited: {self._last_log_line(p.spec.name)} "
                                   f"(log: {self.logs / (p.spec.name + '.log')})")

    def _wait_ready(self, names: set[str], timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        pending = {p.spec.name: p.spec.health for p in self.started if p.spec.name in names}
        while pending:
            self.check_alive()
            for name, health in list(pending.items()):
                if _healthy(health):
                    del pending[name]
                    if name.endswith("-proxy"):
                        self.progress(f"{name} is ready (certificate issued by the identity service)")
            if pending and time.monotonic() > deadline:
                raise MeshctlError(f"demo: not ready after {timeout:.0f}s: {', '.join(sorted(pending))} (logs in {self.logs})")
            if pending:
                time.sleep(0.1)

    def _prepare(self, plan: plan_mod.Plan, *, profiles: bool) -> list[ProcessSpec]:
        """Certificates, tokens, registry, knobs; returns the processes to start, in order."""
        from meshctl.identity import certs

        d = self.dir
        self.progress("generating the trust anchor, the issuer and the tap client's certificate")
        anchor = certs.generate_trust_anchor(common_name=f"root.{plan_mod.MESH_NAMESPACE}.{plan_mod.TRUST_DOMAIN}")
        issuer = certs.generate_issuer(anchor, common_name=f"identity.{plan_mod.MESH_NAMESPACE}.{plan_mod.TRUST_DOMAIN}")
        for fname, text in (("ca.crt", anchor.cert_pem), ("issuer.crt", issuer.cert_pem), ("issuer.key", issuer.key_pem)):
            (d / fname).write_text(text)
        os.chmod(d / "issuer.key", 0o600)
        key = certs.new_private_key()
        leaf = certs.issue_leaf(issuer, public_key=key.public_key(), dns_name=TAP_IDENTITY,
                                lifetime=dt.timedelta(days=365))
        (d / "tap.crt").write_text(certs.cert_to_pem(leaf) + issuer.cert_pem)
        (d / "tap.key").write_text(certs.key_to_pem(key))
        os.chmod(d / "tap.key", 0o600)

        expires = (dt.datetime.now(dt.timezone.utc) + TOKEN_LIFETIME).strftime("%Y-%m-%dT%H:%M:%SZ")
        tokens = {w.name: secrets.token_urlsafe(32) for w in plan.workloads}
        (d / "tokens.json").write_text(json.dumps({"tokens": [
            {"token": t, "namespace": plan_mod.NAMESPACE, "serviceAccount": name, "audience": "identity.meshctl.io",
             "expires": expires} for name, t in tokens.items()]}))
        self.progress("writing the destination service's registry (the three Services and their endpoints)")
        service_profiles = plan_mod.profiles(plan) if profiles else []
        write_registry(d / "registry.json", plan_mod.registry(plan, service_profiles))
        (d / "knobs").mkdir(exist_ok=True)

        py = sys.executable
        cp = plan.control_netns
        specs = [
            ProcessSpec("identity", (py, "-m", "meshctl", "identity", "serve", "--trust-anchors-file", str(d / "ca.crt"),
                                     "--issuer-certificate-file", str(d / "issuer.crt"), "--issuer-key-file",
                                     str(d / "issuer.key"), "--token-registry", str(d / "tokens.json"),
                                     "--listen", plan.identity_addr), health=f"tcp://{plan.identity_addr}", netns=cp),
            ProcessSpec("destination", (py, "-m", "meshctl", "destination", "serve", "--registry", str(d / "registry.json"),
                                        "--addr", plan.destination_addr), health=f"http://{plan.destination_addr}/ready",
                        netns=cp),
        ]
        for w in plan.workloads:
            knobs = d / "knobs" / f"{w.name}.json"
            write_knobs(knobs, failure_rate=plan.price_failure_rate if w.app == "price" else 0.0,
                        latency_ms=plan.price_latency_ms if w.app == "price" else 0.0)
            app_health = f"http://{w.app_host}:{w.port}/ready" if not w.netns else ""
            specs.append(ProcessSpec(f"{w.name}-app", tuple(plan_mod.app_argv(plan, w, knobs=knobs)),
                                     health=app_health, netns=w.netns))
            ident = d / "identity" / w.name
            ident.mkdir(parents=True, exist_ok=True)
            token = d / "identity" / f"{w.name}.token"
            token.write_text(tokens[w.name])
            os.chmod(token, 0o600)
            uid = None
            if w.netns:
                uid = plan_mod.PROXY_UID
                for path in (ident, token):
                    os.chown(path, uid, uid)
            env = plan_mod.proxy_env(plan, w, trust_anchors_pem=anchor.cert_pem, token_file=str(token),
                                     identity_dir=str(ident))
            specs.append(ProcessSpec(f"{w.name}-proxy", (py, "-m", "meshctl_proxy"), tuple(sorted(env.items())),
                                     health=f"http://{w.reachable.admin}/ready", netns=w.netns, uid=uid))
        return specs

    def _check_ports(self, plan: plan_mod.Plan) -> None:
        if plan.netns_id:
            return  # the namespaces are new: nothing else listens there
        addrs = [plan.identity_addr, plan.destination_addr]
        for w in plan.workloads:
            listen = w.listen
            addrs += [f"{w.app_host}:{w.port}", listen.inbound, listen.outbound, listen.admin, listen.control]
        for addr in addrs:
            if not _port_free(addr):
                raise MeshctlError(f"demo: {addr} is already in use (another local demo? stop it with "
                                   f"`meshctl demo down --dir DIR`, or choose another --address-prefix)")

    def up(self, plan: plan_mod.Plan, *, prometheus: bool = True, profiles: bool = False,
           dashboard: bool = True, traffic: float = 0.0) -> str:
        """Bring the mesh up; returns "started", "already up" or "restarted: NAMES"."""
        with self._locked():
            if self._load_record():
                if (self.dir / state.STATE_FILE).exists() and self._namespaces_intact():
                    missing = [p for p in self.started if not is_running(p)]
                    if not missing:
                        return "already up"
                    return "restarted: " + self._restart(missing)
                # A record without mesh.json: an `up` that was killed or failed half-way; or
                # namespaces gone from under a --netns demo.
                self.progress(f"cleaning up a demo that did not finish starting, or lost its namespaces, in {self.dir}")
                self._stop_all()
            return self._start(plan, prometheus=prometheus, profiles=profiles, dashboard=dashboard, traffic=traffic)

    def _start(self, plan: plan_mod.Plan, *, prometheus: bool, profiles: bool, dashboard: bool, traffic: float) -> str:
        if prometheus:
            from meshctl.viz import localprom

            localprom.find_binary()  # one clear line before anything starts
        state.remove(self.dir)
        self.plan, self.started, self.extra = plan, [], {}
        self._check_ports(plan)
        try:
            if plan.netns_id:
                from meshctl.demo import netns

                self.progress("creating the network namespaces (one per pod, behind a bridge) and the iptables rules")
                self.extra["netns"] = netns.create(plan)
                self._save_record()
            specs = self._prepare(plan, profiles=profiles)
            if plan.netns_id:
                from meshctl.demo import netns

                netns.init_pods(plan)
            for spec in specs:
                self.progress(f"starting {spec.name}" + (f" in {spec.netns}" if spec.netns else ""))
                self._spawn(spec)
                if spec.name == "destination":
                    self._wait_ready({"identity", "destination"})
            self._wait_ready({s.name for s in specs})
            if prometheus:
                self._start_prometheus(plan)
            if dashboard and prometheus:
                self._start_dashboard()
            if traffic:
                self._start_traffic(plan, traffic)
            state.save(self.mesh_state(), self.dir)
        except BaseException:
            self.progress("stopping what was started")
            self._stop_all()
            raise
        return "started"

    def _start_prometheus(self, plan: plan_mod.Plan) -> None:
        from meshctl.viz import localprom

        targets = [localprom.proxy_target(w.reachable.admin, namespace=plan_mod.NAMESPACE, pod=w.pod, kind="deployment",
                                          name=w.name) for w in plan.workloads]
        (self.dir / "prometheus").mkdir(exist_ok=True)
        localprom.write_config(self.dir / "prometheus" / localprom.CONFIG_NAME, targets,
                               scrape_interval=f"{self.scrape_interval_s:g}s")
        self.extra["prometheus_port"] = localprom._free_port("127.0.0.1")
        url = f"http://127.0.0.1:{self.extra['prometheus_port']}"
        self.progress(f"starting Prometheus on {url}, scraping the {len(targets)} proxies")
        self._spawn(ProcessSpec("prometheus", (), health=f"{url}/-/ready", kind="prometheus"))
        self.extra["prometheus_url"] = url

    def _start_traffic(self, plan: plan_mod.Plan, rps: float) -> None:
        """A steady trickle of requests to the gateway, as emojivoto's vote-bot gives Linkerd's demo:
        the dashboard and the stats have something to show before anyone runs ab.  Bounded: a day."""
        seconds = 24 * 3600
        self.progress(f"starting a load generator: {rps:g} requests per second to the gateway for at most 24h")
        self._spawn(ProcessSpec("traffic", (sys.executable, "-m", "meshctl", "demo", "load",
                                            f"{plan.gateway_url}/api/products/1", "-n", str(int(rps * seconds)),
                                            "-c", "2", "--rps", f"{rps:g}", "--max-time", f"{seconds}s")))

    def _start_dashboard(self) -> None:
        """The dashboard (``meshctl dashboard``) as one of the demo's processes, when this meshctl has it.

        Given ``--prometheus-url`` it starts before ``mesh.json`` exists and reads the state file
        per request (meshctl.dashboard.launch), so it can be ready before ``up`` writes it.
        """
        import importlib.util

        from meshctl.viz import localprom

        if importlib.util.find_spec("meshctl.cli.dashboard") is None:
            return
        port = localprom._free_port("127.0.0.1")
        url = f"http://127.0.0.1:{port}"
        self.progress(f"starting the dashboard on {url}")
        self._spawn(ProcessSpec("dashboard", (sys.executable, "-m", "meshctl", "dashboard", "--address", "127.0.0.1",
                                              "--port", str(port), "--show", "url", "--wait", "30s",
                                              "--prometheus-url", self.extra["prometheus_url"], "--demo-dir", str(self.dir)),
                                health=f"{url}/ready"))
        self._wait_ready({"dashboard"})
        self.extra["dashboard_url"] = url
        self._save_record()

    def _namespaces_intact(self) -> bool:
        """False when a --netns demo lost its namespaces (a reboot): it is then started afresh."""
        if self.plan is None or not self.plan.netns_id:
            return True
        from meshctl.demo import netns

        return netns.intact(self.plan)

    def _restart(self, missing: list[Started]) -> str:
        names = []
        for p in missing:
            self.progress(f"restarting {p.spec.name} (it was not running)")
            self._spawn(p.spec)
            names.append(p.spec.name)
        try:
            self._wait_ready({n for n in names if n != "prometheus"})
        except MeshctlError:
            raise
        return ", ".join(names)

    def mesh_state(self) -> state.LocalMesh:
        assert self.plan is not None
        plan = self.plan
        return state.LocalMesh(
            namespace=plan_mod.NAMESPACE,
            prometheus_url=self.extra.get("prometheus_url", ""),
            dashboard_url=self.extra.get("dashboard_url"),
            gateway_url=plan.gateway_url,
            tap=state.TapCredentials(identity=TAP_IDENTITY, cert=self.dir / "tap.crt", key=self.dir / "tap.key",
                                     trust_anchors=self.dir / "ca.crt"),
            workloads=tuple(state.LocalWorkload(
                namespace=plan_mod.NAMESPACE, kind="deployment", name=w.name, pod=w.pod, service=w.service,
                identity=w.identity, app=f"{w.pod_ip if w.netns else w.app_host}:{w.port}",
                proxy=state.ProxyAddrs(admin=w.reachable.admin, control=w.reachable.control, inbound=w.reachable.inbound,
                                       outbound=w.reachable.outbound)) for w in plan.workloads),
        )

    # --- looking ----------------------------------------------------------------------

    def status(self) -> list[ProcessStatus]:
        if not self._load_record():
            raise MeshctlError(f"no local mesh in {self.dir} (start one with: meshctl demo up)")
        from concurrent.futures import ThreadPoolExecutor

        # Ask every process at once: a slow answer (a loaded machine) then costs one timeout, not nine.
        with ThreadPoolExecutor(max_workers=max(1, len(self.started))) as pool:
            healthy = list(pool.map(lambda p: is_running(p) and _healthy(p.spec.health), self.started))
        rows = []
        for p, ok in zip(self.started, healthy):
            running = is_running(p)
            health = "-" if not p.spec.health else ("ready" if ok else "not ready")
            address = p.spec.health.split("://", 1)[-1].split("/", 1)[0] if p.spec.health else ""
            log = self.dir / "prometheus" / "prometheus.log" if p.spec.kind == "prometheus" else self.logs / f"{p.spec.name}.log"
            rows.append(ProcessStatus(p.spec.name, p.pid, "running" if running else "exited", health, address, str(log)))
        return rows

    def recorded_netns_net(self) -> str | None:
        """The /24 a recorded --netns demo of this directory uses (kept across `up`s)."""
        with contextlib.suppress(MeshctlError):
            if self._load_record() and self.plan is not None and self.plan.netns_id:
                return self.plan.netns_net
        return None

    def load_plan(self) -> plan_mod.Plan:
        if not self._load_record() or self.plan is None:
            raise MeshctlError(f"no local mesh in {self.dir} (start one with: meshctl demo up)")
        return self.plan

    # --- stopping ---------------------------------------------------------------------

    def _stop_all(self) -> None:
        for p in reversed(self.started):
            _stop_group(p)
        deadline = time.monotonic() + STOP_GRACE
        while any(is_running(p) for p in self.started) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in self.started:
            _kill_group(p)
        while any(is_running(p) for p in self.started) and time.monotonic() < deadline + 2:
            time.sleep(0.02)
        for p in self.started:
            # Reap the ones this very process started (the one-shot demo, --foreground);
            # the others' parent is init by now.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)
        left = [f"{p.spec.name} (pid {p.pid})" for p in self.started if is_running(p)]
        if left:
            # Keep the record: a later `down` (as the right user) must still find them.
            raise MeshctlError(f"demo: could not stop {', '.join(left)} (started by another user? "
                               "run meshctl demo down as that user, or as root)")
        if self.plan is not None and self.plan.netns_id:
            from meshctl.demo import netns

            netns.remove(self.plan)
        self.started = []
        with contextlib.suppress(FileNotFoundError):
            (self.dir / RECORD).unlink()
        state.remove(self.dir)

    def down(self, *, quiet: bool = False) -> bool:
        """Stop everything; False when nothing was recorded in this directory."""
        with self._locked():
            if not self._load_record():
                state.remove(self.dir)
                return False
            if self.plan is not None and self.plan.netns_id and os.geteuid() != 0:
                raise MeshctlError("demo down: this demo runs in network namespaces (--netns); stopping it needs root")
            if not quiet:
                self.progress(f"stopping {len(self.started)} processes")
            self._stop_all()
            return True


# --- files the running demo watches ----------------------------------------------------

def write_registry(path: Path, doc: dict) -> None:
    """Write the destination registry whole (tmp + rename): the service polls it and must never see half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)


def write_knobs(path: Path, *, failure_rate: float, latency_ms: float) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"failure_rate": failure_rate, "latency_ms": latency_ms}))
    os.replace(tmp, path)

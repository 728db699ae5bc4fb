"""A real Prometheus on this machine: Debian's ``/usr/bin/prometheus`` on loopback.

What ``meshctl demo`` and the tests run instead of the viz extension's
in-cluster Prometheus.  Targets are static (the demo knows its proxies'
admin addresses) and carry the labels Linkerd's pod discovery relabels to:
``namespace``, ``pod``, the owner (``deployment``, ``statefulset``...) and
``job="linkerd-proxy"`` (the job name of Linkerd's scrape config), so every
query, dashboard and command reads the same series in both places.

The proxy also exports its own pod labels (``meshctl_proxy.telemetry.metrics``, for
scrapes without a Prometheus); ``honor_labels: true`` keeps them instead of
Prometheus renaming them to ``exported_namespace`` etc. on conflict.  They
carry the same values as the target labels, so nothing is lost either way.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from meshctl.errors import MeshctlError

JOB = "linkerd-proxy"  # Linkerd's scrape job for proxies (viz prometheus.yml)
CONFIG_NAME = "prometheus.yml"
DEBIAN_BINARY = "/usr/bin/prometheus"
READY_TIMEOUT_S = 30.0


def write_config(path: Path | str, targets: Iterable[tuple[str, Mapping[str, str]]], *,
                 scrape_interval: str = "5s") -> Path:
    """Write a Prometheus config scraping each ``(addr, labels)`` target's ``/metrics``.

    *addr* is the proxy's admin ``HOST:PORT``; *labels* are Linkerd's target
    labels (``namespace``, ``pod``, ``deployment``...).  The file is written
    whole (tmp + rename), so a reload never reads half of it.
    """
    import yaml

    path = Path(path)
    static = []
    for addr, labels in targets:
        if not isinstance(addr, str) or ":" not in addr:
            raise MeshctlError(f"prometheus target: expected HOST:PORT, got {addr!r}")
        static.append({"targets": [addr], "labels": {k: str(v) for k, v in sorted(labels.items()) if v}})
    config = {
        # A scrape may not outlast its interval (Prometheus refuses scrape_timeout > scrape_interval).
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                   "evaluation_interval": scrape_interval},
        "scrape_configs": [{
            "job_name": JOB,
            "honor_labels": True,
            "metrics_path": "/metrics",
            "static_configs": static,
        }],
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    os.replace(tmp, path)
    return path


def find_binary() -> str:
    found = shutil.which("prometheus") or (DEBIAN_BINARY if os.access(DEBIAN_BINARY, os.X_OK) else None)
    if not found:
        raise MeshctlError(f"prometheus: not found on PATH nor at {DEBIAN_BINARY}: install Debian's "
                           "'prometheus' package (apt-get install prometheus)")
    return found


def _free_port(host: str) -> int:
    # Prometheus can listen on port 0 but never says which port it got; pick one here.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclasses.dataclass(slots=True)
class LocalPrometheus:
    """A running Prometheus process; :meth:`stop` ends it (also as a context manager)."""

    url: str
    process: subprocess.Popen
    data_dir: Path
    config: Path

    @property
    def log(self) -> Path:
        return self.data_dir / "prometheus.log"

    def __enter__(self) -> "LocalPrometheus":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def reload(self) -> None:
        """Re-read the config file (after :func:`write_config`), as ``/-/reload`` does."""
        self.process.send_signal(signal.SIGHUP)

    def wait_scraped(self, count: int, *, timeout: float = 30.0) -> None:
        """Wait until *count* targets have been scraped successfully at least once."""
        wait_for_targets(self.url, count, timeout=timeout, alive=self._check_alive)

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            raise MeshctlError(f"prometheus exited with {self.process.returncode}: {_last_line(self.log)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_for_targets(url: str, count: int, *, timeout: float = 30.0, alive=lambda: None) -> None:
    """Wait until the Prometheus at *url* has scraped *count* targets successfully (``health == "up"``)."""
    import httpx

    deadline = time.monotonic() + timeout
    up = 0
    while time.monotonic() < deadline:
        alive()
        try:
            data = httpx.get(f"{url}/api/v1/targets", params={"state": "active"}, timeout=2).json()
            up = sum(1 for t in data["data"]["activeTargets"] if t.get("health") == "up")
            if up >= count:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise MeshctlError(f"prometheus at {url}: {up} of {count} targets up after {timeout:.0f}s (see {url}/targets)")


def _last_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    # Prometheus' fatal line is usually the last "level=error" one.
    errors = [ln for ln in lines if "level=error" in ln]
    line = (errors or lines or ["no output"])[-1]
    # logfmt: keep what it says (msg, err), not the timestamp and caller.
    said = [m.group(2).replace('\\"', '"') for m in re.finditer(r'\b(msg|err)="((?:[^"\\]|\\.)*)"', line)]
    return ": ".join(said) if said else line


def start(data_dir: Path | str, *, port: int = 0, host: str = "127.0.0.1", config: Path | str | None = None,
          retention: str = "1d") -> LocalPrometheus:
    """Start Prometheus on *host*:*port* (0: a free port) with its TSDB and log in *data_dir*.

    The config is *config*, else ``data_dir/prometheus.yml`` (see :func:`write_config`).
    Returns once ``/-/ready`` answers 200; raises MeshctlError with one line
    (the binary missing, or what Prometheus logged before exiting) otherwise.
    """
    import httpx

    binary = find_binary()
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = Path(config) if config is not None else data_dir / CONFIG_NAME
    if not config_path.is_file():
        raise MeshctlError(f"prometheus: no config at {config_path} (write it with write_config first)")
    port = port or _free_port(host)
    url = f"http://{host}:{port}"
    argv = [binary, f"--config.file={config_path}", f"--storage.tsdb.path={data_dir / 'data'}",
            f"--storage.tsdb.retention.time={retention}", f"--web.listen-address={host}:{port}",
            "--web.enable-lifecycle", "--log.level=warn"]
    with open(data_dir / "prometheus.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    prom = LocalPrometheus(url=url, process=proc, data_dir=data_dir, config=config_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while True:
            prom._check_alive()
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    return prom
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise MeshctlError(f"prometheus at {url}: not ready after {READY_TIMEOUT_S:.0f}s: {_last_line(prom.log)}")
            time.sleep(0.1)
    except BaseException:
        prom.stop()
        raise


def proxy_target(admin: str, *, namespace: str, pod: str, kind: str | None = None,
                 name: str | None = None) -> tuple[str, dict[str, str]]:
    """A target with Linkerd's labels for one meshed pod's proxy admin address.

    *kind* is the owner's kind (``deployment``, ``statefulset``, ``daemonset``...), which
    Linkerd's relabelling turns into a label of that name carrying the owner's name.
    """
    labels = {"namespace": namespace, "pod": pod, "container": "linkerd-proxy"}
    if kind and name:
        labels[kind.lower()] = name
    return admin, labels

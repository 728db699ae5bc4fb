"""The local mesh's state file, ``mesh.json``: what ``meshctl demo up`` runs, for its readers.

``meshctl demo up`` keeps everything in one state directory (``--dir DIR``, else
``$MESHCTL_DEMO_DIR``, else ``~/.local/state/meshctl/demo``).  ``mesh.json`` in it says
where the local mesh answers: Prometheus, the dashboard, the gateway, and every
workload's app and proxy listeners, plus the client certificate a tap client presents
to the proxies' control listeners.  ``meshctl viz``, ``viz tap`` and the dashboard read
it with :func:`load`, as their cluster counterparts read the Kubernetes API.

The format is contract B of the project (version 1)::

    {"version": 1, "namespace": "shop", "prometheus_url": "http://127.0.0.1:PORT",
     "dashboard_url": "http://127.0.0.1:PORT" | null, "gateway_url": "http://HOST:PORT",
     "tap": {"identity", "cert", "key", "trust_anchors"} | null,
     "workloads": [{"namespace", "kind", "name", "pod", "service", "identity", "app",
                    "proxy": {"admin", "control", "inbound", "outbound"}}]}

Unknown keys are ignored on reading, so a later version may add fields without breaking
older readers; a missing or mistyped field is an error naming the file and the field.
The file is written atomically (a temporary file, then ``os.replace``), so a reader never
sees half of it.  Standard library only: readers import this cheaply.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from meshctl.errors import MeshctlError

VERSION = 1
STATE_FILE = "mesh.json"
ENV_DIR = "MESHCTL_DEMO_DIR"


@dataclasses.dataclass(frozen=True, slots=True)
class ProxyAddrs:
    """A proxy's listeners, each ``HOST:PORT``; ``control`` is the tap listener (Linkerd's 4190)."""

    admin: str
    control: str
    inbound: str
    outbound: str


@dataclasses.dataclass(frozen=True, slots=True)
class TapCredentials:
    """The client certificate a tap client presents to the proxies' control listeners (mTLS)."""

    identity: str
    cert: Path
    key: Path
    trust_anchors: Path


@dataclasses.dataclass(frozen=True, slots=True)
class LocalWorkload:
    namespace: str
    kind: str  # "deployment", as Linkerd's resource types
    name: str
    pod: str
    service: str
    identity: str
    app: str  # HOST:PORT of the application itself (behind the proxy)
    proxy: ProxyAddrs


@dataclasses.dataclass(frozen=True, slots=True)
class LocalMesh:
    namespace: str
    prometheus_url: str
    dashboard_url: str | None
    gateway_url: str
    tap: TapCredentials | None
    workloads: tuple[LocalWorkload, ...]
    version: int = VERSION

    def workload(self, name: str) -> LocalWorkload:
        """The workload called ``name`` (its Deployment's name); MeshctlError naming the known ones otherwise."""
        for w in self.workloads:
            if w.name == name:
                return w
        known = ", ".join(w.name for w in self.workloads) or "none"
        raise MeshctlError(f"the local mesh has no workload {name!r} (it has: {known})")

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "namespace": self.namespace,
            "prometheus_url": self.prometheus_url,
            "dashboard_url": self.dashboard_url,
            "gateway_url": self.gateway_url,
            "tap": None if self.tap is None else {
                "identity": self.tap.identity, "cert": str(self.tap.cert), "key": str(self.tap.key),
                "trust_anchors": str(self.tap.trust_anchors)},
            "workloads": [{
                "namespace": w.namespace, "kind": w.kind, "name": w.name, "pod": w.pod, "service": w.service,
                "identity": w.identity, "app": w.app, "proxy": dataclasses.asdict(w.proxy)} for w in self.workloads],
        }


def state_dir(dir: Path | str | None = None) -> Path:
    """The state directory: ``dir``, else ``$MESHCTL_DEMO_DIR``, else ``~/.local/state/meshctl/demo``."""
    if dir:
        return Path(dir).expanduser()
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    return Path.home() / ".local" / "state" / "meshctl" / "demo"


def save(mesh: LocalMesh, dir: Path | str | None = None) -> Path:
    """Write ``mesh.json`` atomically into the state directory; returns its path."""
    d = state_dir(dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / STATE_FILE
    tmp = d / f".{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(mesh.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def remove(dir: Path | str | None = None) -> None:
    """Delete ``mesh.json`` (``demo down``): readers then say the local mesh is not up."""
    (state_dir(dir) / STATE_FILE).unlink(missing_ok=True)


def load(dir: Path | str | None = None) -> LocalMesh:
    """Read ``mesh.json``; MeshctlError with a one-line message naming the file when absent or invalid."""
    path = state_dir(dir) / STATE_FILE
    try:
        raw = path.read_text()
    except FileNotFoundError:
        raise MeshctlError(f"no local mesh: {path} does not exist (start one with: meshctl demo up)") from None
    except OSError as exc:
        raise MeshctlError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise MeshctlError(f"{path}: not JSON: {exc}") from None
    try:
        return _parse(data)
    except _FieldError as exc:
        raise MeshctlError(f"{path}: {exc}") from None


class _FieldError(Exception):
    pass


def _field(obj: object, key: str, kind: type | tuple[type, ...], where: str, *, nullable: bool = False):
    if not isinstance(obj, dict):
        raise _FieldError(f"{where or 'the document'}: expected an object")
    if key not in obj:
        raise _FieldError(f"{where}{key}: missing")
    value = obj[key]
    if value is None and nullable:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _FieldError(f"{where}{key}: expected {names}, got {type(value).__name__}")
    return value


def _parse(data: object) -> LocalMesh:
    version = _field(data, "version", int, "")
    if version != VERSION:
        raise _FieldError(f"version: this meshctl reads version {VERSION}, the file is version {version}")
    tap = _field(data, "tap", dict, "", nullable=True)
    if tap is not None:
        tap = TapCredentials(
            identity=_field(tap, "identity", str, "tap."),
            cert=Path(_field(tap, "cert", str, "tap.")),
            key=Path(_field(tap, "key", str, "tap.")),
            trust_anchors=Path(_field(tap, "trust_anchors", str, "tap.")),
        )
    workloads = []
    for i, w in enumerate(_field(data, "workloads", list, "")):
        where = f"workloads[{i}]."
        proxy = _field(w, "proxy", dict, where)
        workloads.append(LocalWorkload(
            **{k: _field(w, k, str, where) for k in ("namespace", "kind", "name", "pod", "service", "identity", "app")},
            proxy=ProxyAddrs(**{k: _field(proxy, k, str, f"{where}proxy.") for k in ("admin", "control", "inbound", "outbound")}),
        ))
    return LocalMesh(
        namespace=_field(data, "namespace", str, ""),
        prometheus_url=_field(data, "prometheus_url", str, ""),
        dashboard_url=_field(data, "dashboard_url", str, "", nullable=True),
        gateway_url=_field(data, "gateway_url", str, ""),
        tap=tap,
        workloads=tuple(workloads),
        version=version,
    )

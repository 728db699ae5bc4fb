"""Live changes to a running local mesh: ``demo apply``, ``demo edit``, ``demo set``.

In a cluster, ``kubectl apply`` of a ServiceProfile reaches the proxies through the
destination service's watch on the API server.  Here the destination service watches
its registry file (``registry.json``, :class:`meshctl.destination.registry.LocalRegistry`),
so applying is: validate with the project's one ServiceProfile model
(:mod:`meshctl_proxy.policy.service_profile`), replace the profile of that name in the registry
(tmp + rename), and wait until the destination service has published the new version:
from then on the proxies' open watches carry it, with no restart.

``set`` writes an app's knobs file (``samples/apps/shop.py --knobs``) and waits for the
app to say it applied it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from meshctl.errors import InputError, MeshctlError

PUBLISH_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    name: str
    namespace: str
    outcome: str  # created | configured | unchanged

    def __str__(self) -> str:  # kubectl's line
        return f"serviceprofile.meshctl.io/{self.name} {self.outcome}"


def parse_profiles(data: bytes, *, source: str) -> list[dict[str, Any]]:
    """The ServiceProfile documents of *data*, each checked by the profile model; InputError naming
    the source, document number and field of the first problems otherwise (nothing is applied then)."""
    from meshctl.profiles import text
    from meshctl_proxy.policy.service_profile import ProfileError, ServiceProfile

    documents = [(n, d) for n, d in text.parse_documents(data, source=source) if d is not None]
    if not documents:
        raise InputError(f"{source}: no documents")
    out = []
    for number, doc in documents:
        where = f"{source}: document {number}"
        if not isinstance(doc, dict):
            raise InputError(f"{where}: expected a ServiceProfile object, got {type(doc).__name__}")
        kind = doc.get("kind")
        if kind != "ServiceProfile":
            # TrafficSplit is the other kind the walkthrough applies; the proxy has no splits yet.
            raise InputError(f"{where}: kind {kind!r} is not supported by the local demo (only ServiceProfile)")
        try:
            profile = ServiceProfile.from_dict(doc)
        except ProfileError as exc:
            problems = "; ".join(str(p) for p in exc.problems)
            raise InputError(f"{where}: {problems}") from None
        if not profile.name:
            raise InputError(f"{where}: metadata.name: missing")
        out.append(profile.to_dict())
    return out


def _destination_version(addr: str) -> int | None:
    import httpx

    try:
        return int(httpx.get(f"http://{addr}/ready", timeout=2).json()["version"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def apply_profiles(registry_path: Path, destination_addr: str, profiles: list[dict[str, Any]]) -> list[Applied]:
    """Put *profiles* into the registry (replacing same-named ones) and wait for the destination service."""
    from meshctl.demo.local import write_registry

    doc = json.loads(registry_path.read_text())
    current = doc.setdefault("profiles", [])
    results = []
    for p in profiles:
        meta = p["metadata"]
        key = (meta["name"], meta.get("namespace"))
        index = next((i for i, q in enumerate(current)
                      if (q["metadata"]["name"], q["metadata"].get("namespace")) == key), None)
        if index is None:
            current.append(p)
            outcome = "created"
        elif current[index] == p:
            outcome = "unchanged"
        else:
            current[index] = p
            outcome = "configured"
        results.append(Applied(meta["name"], meta.get("namespace") or "", outcome))
    if all(r.outcome == "unchanged" for r in results):
        return results
    before = _destination_version(destination_addr)
    write_registry(registry_path, doc)
    deadline = time.monotonic() + PUBLISH_TIMEOUT
    while True:
        now = _destination_version(destination_addr)
        if before is not None and now is not None and now > before:
            return results
        if time.monotonic() > deadline:
            raise MeshctlError(f"the destination service at {destination_addr} did not publish the change within "
                               f"{PUBLISH_TIMEOUT:.0f}s (see its log); {registry_path} has it")
        time.sleep(0.1)


def current_profile(registry_path: Path, name: str) -> dict[str, Any]:
    doc = json.loads(registry_path.read_text())
    for p in doc.get("profiles") or []:
        if p["metadata"]["name"] == name:
            return p
    known = ", ".join(sorted(p["metadata"]["name"] for p in doc.get("profiles") or [])) or "none yet"
    raise MeshctlError(f"serviceprofiles.meshctl.io {name!r} not found (the local mesh has: {known}; "
                       "create one with meshctl demo apply -f FILE)")


def set_knobs(knobs_dir: Path, workload: str, *, failure_rate: float | None, latency_ms: float | None,
              timeout: float = 5.0) -> dict[str, float]:
    """Change an app's knobs while it runs; returns what the app applied."""
    from meshctl.demo.local import write_knobs

    path = knobs_dir / f"{workload}.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        raise MeshctlError(f"no knobs for {workload!r} in {knobs_dir} (is the demo up?)") from None
    new = {"failure_rate": old.get("failure_rate", 0.0) if failure_rate is None else failure_rate,
           "latency_ms": old.get("latency_ms", 0.0) if latency_ms is None else latency_ms}
    write_knobs(path, **new)
    applied = path.with_name(path.name + ".applied")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(applied.read_text()) == new:
                return new
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise MeshctlError(f"{workload} did not apply its knobs within {timeout:.0f}s (is its app running? meshctl demo status)")

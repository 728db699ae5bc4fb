"""Identity material on disk and on the wire, for ``meshctl identity``.

Writing a trust anchor and issuer into files (all or nothing), reading a
workload certificate from a file or a proxy's admin endpoint, rendering it,
and running the identity service from files.  No typer here: the CLI module
passes plain values in.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile

from meshctl.errors import InputError
from meshctl.identity import certs

FILE_NAMES = ("ca.crt", "ca.key", "issuer.crt", "issuer.key")


def create_anchor_and_issuer(out_dir: str, *, trust_domain: str = "cluster.local",
                             anchor_lifetime: dt.timedelta = certs.ANCHOR_LIFETIME,
                             issuer_lifetime: dt.timedelta = certs.ISSUER_LIFETIME, force: bool = False) -> list[str]:
    """Write ca.crt, ca.key, issuer.crt, issuer.key into *out_dir*; returns their paths.

    Refuses to overwrite without *force*.  Files are written to temporaries
    first and renamed at the end, so a failure leaves nothing half-written.
    """
    if not os.path.isdir(out_dir):
        raise InputError(f"{out_dir}: not a directory")
    paths = [os.path.join(out_dir, n) for n in FILE_NAMES]
    if not force:
        for p in paths:
            if os.path.exists(p):
                raise InputError(f"{p}: already exists (use --force to overwrite)")
    anchor = certs.generate_trust_anchor(common_name=f"root.meshctl.{trust_domain}", lifetime=anchor_lifetime)
    issuer = certs.generate_issuer(anchor, common_name=f"identity.meshctl.{trust_domain}", lifetime=issuer_lifetime)
    contents = (anchor.cert_pem, anchor.key_pem, issuer.cert_pem, issuer.key_pem)
    temps = []
    try:
        for path, text in zip(paths, contents):
            fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".meshctl-identity-")  # mode 0600
            temps.append(tmp)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            if path.endswith(".crt"):
                os.chmod(tmp, 0o644)
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
    except OSError as exc:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise InputError(f"{out_dir}: {exc.strerror or exc}") from None
    return paths


def fetch_certificate(*, file: str | None = None, admin: str | None = None, timeout: float = 5.0) -> tuple[str, str]:
    """(PEM chain, source name) from a file or a proxy's admin ``/identity`` endpoint."""
    if file is not None:
        return certs.read_text(file), file
    import httpx

    url = f"http://{admin}/identity"
    try:
        resp = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        raise InputError(f"{url}: {exc}") from None
    if resp.status_code != 200:
        raise InputError(f"{url}: {resp.status_code} {resp.text.strip()[:200]}")
    return resp.text, url


def render_chain(pem: str, *, source: str, as_json: bool = False, now: dt.datetime | None = None) -> str:
    now = now or certs.utcnow()
    chain = certs.load_certificates(pem, source=source)
    infos = [certs.describe(c) for c in chain]
    if as_json:
        return json.dumps([i.to_dict() for i in infos], indent=2)
    lines = []
    for n, info in enumerate(infos):
        role = "certificate" if n == 0 else f"intermediate {n}"
        left = info.not_after - now
        state = "EXPIRED" if left.total_seconds() <= 0 else (
            "NOT YET VALID" if now < info.not_before else f"expires in {_human(left)}")
        lines += [
            f"{role}:",
            f"  identity:     {', '.join(info.dns_names) or '-'}",
            f"  subject:      {info.subject}",
            f"  issuer:       {info.issuer}",
            f"  valid:        {info.not_before:%Y-%m-%dT%H:%M:%SZ} .. {info.not_after:%Y-%m-%dT%H:%M:%SZ} ({state})",
            f"  key:          {info.key_algorithm}{' (CA)' if info.is_ca else ''}",
            f"  serial:       {info.serial}",
            f"  sha256:       {info.sha256_fingerprint}",
        ]
    return "\n".join(lines)


def _human(delta: dt.timedelta) -> str:
    s = int(delta.total_seconds())
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60}m"
    return f"{s // 60}m{s % 60}s"


def serve_from_files(*, trust_anchors_file: str, issuer_certificate_file: str, issuer_key_file: str,
                     token_registry: str | None, listen: str, mesh_namespace: str, trust_domain: str,
                     leaf_lifetime: dt.timedelta, clock_skew: dt.timedelta, burst: int, per_second: float,
                     kube=None, report=print) -> None:
    """Load the issuer, pick the token reviewer, serve until SIGTERM/SIGINT."""
    import asyncio
    import signal

    from meshctl.identity import service
    from meshctl.meshconfig import MeshConfig
    from meshctl_proxy.config import parse_addr

    try:
        host, port = parse_addr(listen)
    except ValueError as exc:
        raise InputError(f"--listen: {exc}") from None
    issuer = certs.load_issuer(cert_pem=certs.read_text(issuer_certificate_file), key_pem=certs.read_text(issuer_key_file),
                               trust_anchors_pem=certs.read_text(trust_anchors_file), cert_source=issuer_certificate_file,
                               key_source=issuer_key_file, anchors_source=trust_anchors_file)
    reviewer = _reviewer(token_registry, kube)
    names = MeshConfig(mesh_namespace=mesh_namespace, trust_domain=trust_domain)
    authority = service.Authority(issuer, names=names, leaf_lifetime=leaf_lifetime, clock_skew=clock_skew,
                                  limiter=service.RateLimiter(burst=burst, per_second=per_second))
    server = service.IdentityServer(authority, reviewer, service.ServiceSettings(listen_host=host, listen_port=port))

    async def main() -> None:
        bound = await server.start()
        report(f"identity service {service.service_identity(names)} listening on {bound[0]}:{bound[1]}")
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await server.serve_forever()
        except asyncio.CancelledError:
            report(f"identity service stopping: issued {server.issued}, refused {server.refused}")

    asyncio.run(main())


def _reviewer(token_registry: str | None, kube):
    if token_registry:
        from meshctl.identity.tokens import LocalTokenRegistry

        return LocalTokenRegistry(token_registry)
    # In a cluster the control plane's TokenReview implementation (meshctl.k8s) is used.
    from meshctl import k8s

    factory = getattr(k8s, "token_reviewer", None)
    if factory is None:
        raise InputError("--token-registry: required (this build has no Kubernetes TokenReview reviewer)")
    return factory(kube)

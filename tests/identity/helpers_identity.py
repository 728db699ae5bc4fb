"""Shared by the identity tests: a CA, leaves with chosen names and windows, a running identity service."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os

from meshctl.identity import certs, service, tokens
from meshctl.meshconfig import MeshConfig

MESH = MeshConfig()
SVC_NAME = service.service_identity(MESH)


def leaf_files(tmp_path, issuer: certs.KeyPair, name: str, *, lifetime=dt.timedelta(hours=1), now=None,
               backdate=dt.timedelta(0), tag: str = "leaf") -> tuple[str, str, str]:
    """Write a leaf (+issuer) chain and key; returns (chain_pem, cert_file, key_file)."""
    key = certs.new_private_key()
    leaf = certs.issue_leaf(issuer, public_key=key.public_key(), dns_name=name, lifetime=lifetime, now=now,
                            backdate=backdate)
    chain = certs.cert_to_pem(leaf) + issuer.cert_pem
    cert_file, key_file = tmp_path / f"{tag}.crt", tmp_path / f"{tag}.key"
    cert_file.write_text(chain)
    key_file.write_text(certs.key_to_pem(key))
    return chain, str(cert_file), str(key_file)


def make_authority(anchor: certs.KeyPair, issuer: certs.KeyPair, **kw) -> service.Authority:
    loaded = certs.load_issuer(cert_pem=issuer.cert_pem, key_pem=issuer.key_pem, trust_anchors_pem=anchor.cert_pem)
    return service.Authority(loaded, names=MESH, **kw)


@contextlib.asynccontextmanager
async def running_service(authority: service.Authority, registry_path: str):
    server = service.IdentityServer(authority, tokens.LocalTokenRegistry(registry_path),
                                    service.ServiceSettings(listen_host="127.0.0.1", listen_port=0))
    host, port = await server.start()
    task = asyncio.create_task(server.serve_forever())
    try:
        yield server, host, port
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def identity_settings(tmp_path, anchor, port, token, *, name, min_refresh=10.0, svc_name=SVC_NAME):
    from meshctl_proxy.identity.certificates import IdentitySettings

    token_file = tmp_path / f"token-{name.split('.')[0]}"
    token_file.write_text(token)
    return IdentitySettings(local_name=name, trust_anchors_pem=anchor.cert_pem, svc_host="127.0.0.1", svc_port=port,
                            svc_name=svc_name, token_file=str(token_file),
                            directory=str(tmp_path / f"id-{name.split('.')[0]}"), min_refresh=min_refresh)


# Fixtures, imported by the test modules that use them (one CA per session: key generation is cheap, but
# every test sharing one anchor mirrors a real mesh).
import pytest  # noqa: E402


# Made an hour in the past: tests take their NOW at import, and in a full run
# more than the 20 s backdating can pass between import and these fixtures.
_MADE_AT = certs.utcnow() - dt.timedelta(hours=1)


@pytest.fixture(scope="session")
def anchor():
    return certs.generate_trust_anchor(now=_MADE_AT)


@pytest.fixture(scope="session")
def issuer(anchor):
    return certs.generate_issuer(anchor, now=_MADE_AT)

"""Fixtures for the adversarial suite (docs/security.md): independent peers and real proxies on loopback.

- ``loop_thread``, ``proxy``, ``start_proxy``, shared from ``tests/proxy``'s
  conftest: ``proxy`` is one ``meshctl-proxy`` process per module, listeners
  on loopback ephemeral ports; ``start_proxy(**env)`` starts more with other
  settings (each stopped at the end of the test);
- ``upstream`` / ``h2_upstream``: recording HTTP/1.1 (h11) and HTTP/2 (h2)
  servers (:mod:`.peers`), cleared before each test, so assertions are on
  what the upstream really received;
- ``mesh`` / ``meshed_proxy``: a real identity service with its CA, and a
  proxy certified by it (for what the inbound side does with mesh TLS);
- ``proxy_chain(hops, **env)``: zero, one or two proxies (a mesh hop) in front
  of an upstream named by the request's authority.

One file per class of attack (``test_cNN_<class>.py``), each covering the
case, its neighbours (other spellings, both protocols, both directions), and
what the upstream saw.
"""

from __future__ import annotations

import pytest

from proxy.conftest import ProxyProcess, loop_thread, proxy, start_proxy  # noqa: F401 (fixtures shared)

from .peers import ForwardingProxy, RecordingH2Upstream, RecordingUpstream, wait_until


@pytest.fixture(scope="module")
def _upstream(loop_thread):
    u = loop_thread.run(RecordingUpstream().start())
    yield u
    loop_thread.run(u.stop())


@pytest.fixture
def upstream(_upstream):
    _upstream.clear()
    return _upstream


@pytest.fixture(scope="module")
def _h2_upstream(loop_thread):
    u = loop_thread.run(RecordingH2Upstream().start())
    yield u
    loop_thread.run(u.stop())


@pytest.fixture
def h2_upstream(_h2_upstream):
    _h2_upstream.clear()
    return _h2_upstream


@pytest.fixture
def proxy_chain():
    """``chain(hops, **env)``: the address a client connects to in front of 0, 1 or 2 proxies (None for 0:
    connect to the upstream itself), routed by the request's authority; with 2, a mesh hop
    (:class:`.peers.ForwardingProxy` -> the server-side proxy's inbound).  Stopped after the test."""
    started = []

    def chain(hops: int, **env):
        if hops == 0:
            return None
        if hops == 1:
            started.append(ProxyProcess(**env))
            return started[-1].outbound
        server_side = ProxyProcess(**env)
        started.append(server_side)
        started.append(ForwardingProxy(server_side.inbound[1], **env))
        return started[-1].outbound

    yield chain
    for p in started:
        p.terminate()


@pytest.fixture(scope="module")
def mesh(loop_thread, tmp_path_factory):
    """A mesh's identity service and CA (:class:`.peers.MeshAuthority`)."""
    from .peers import MeshAuthority

    m = loop_thread.run(MeshAuthority(tmp_path_factory.mktemp("mesh"), loop_thread).start())
    yield m
    loop_thread.run(m.stop())


@pytest.fixture(scope="module")
def meshed_proxy(mesh):
    """A proxy with identity ``web.adv...`` from the mesh's identity service, ready (certified)."""
    p = ProxyProcess(**mesh.proxy_env("web"))
    p.identity = mesh.identity("web")
    assert wait_until(lambda: p.admin_get("/ready")[0] == 200, timeout=15), "meshed proxy never became ready"
    yield p
    p.terminate()

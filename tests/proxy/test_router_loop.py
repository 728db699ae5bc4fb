"""The outbound/inbound routers refuse requests that would come back into the proxy, and only those."""

from __future__ import annotations

import pytest

from meshctl_proxy.policy.router import DirectRouter


@pytest.mark.parametrize("listeners, host, port, loops", [
    ({("0.0.0.0", 4140)}, "127.0.0.1", 4140, True),        # wildcard listener: every loopback address reaches it
    ({("0.0.0.0", 4140)}, "localhost", 4140, True),
    ({("127.0.0.1", 4140)}, "0.0.0.0", 4140, True),        # connect(0.0.0.0) reaches local listeners
    ({("127.0.10.2", 5000)}, "127.0.10.2", 5000, True),    # exactly the listener
    ({("127.0.10.2", 5000)}, "127.0.10.102", 5000, False), # another loopback address: the app behind the proxy
    ({("127.0.10.2", 5000)}, "localhost", 5000, False),
    ({("0.0.0.0", 4140)}, "127.0.0.1", 8080, False),
    ({("::", 4140)}, "::1", 4140, True),
])
def test_loop_is_an_address_the_proxy_listens_on(listeners, host, port, loops):
    assert DirectRouter(own_addrs=frozenset(listeners))._looping(host, port) is loops

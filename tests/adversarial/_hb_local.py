"""Local fixtures of harden-b's classes until the shared tests/adversarial conftest lands (then removed)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# One proxy process; with FORWARD_PORT set its outbound side sends everything to that port (the
# client-side proxy of a mesh hop, forwarding to the server-side proxy's inbound listener).
LAUNCH = """
import os, sys
from meshctl_proxy import config
from meshctl_proxy.model import Endpoint
from meshctl_proxy.policy.router import DirectRouter
from meshctl_proxy.transport.server import run

class ForwardTo(DirectRouter):
    def select(self, target):
        return Endpoint("127.0.0.1", int(os.environ["FORWARD_PORT"]))

seams = {"outbound_router": ForwardTo()} if os.environ.get("FORWARD_PORT") else {}
sys.exit(run(config.load({k: v for k, v in os.environ.items() if k.startswith("MESHCTL_PROXY_")}), **seams))
"""


class Proxy:
    def __init__(self, *, forward: int | None = None, **env: str) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("MESHCTL_PROXY_")}
        full.update({"PYTHONPATH": str(ROOT / "src"), "MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:0",
                     "MESHCTL_PROXY_INBOUND_LISTEN_ADDR": "127.0.0.1:0",
                     "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": "127.0.0.1:0", "MESHCTL_PROXY_CONTROL_LISTEN_ADDR": "127.0.0.1:0",
                     "MESHCTL_PROXY_LOG_LEVEL": "warn",
                     "MESHCTL_PROXY_IDENTITY_DISABLED": "true"})
        if forward:
            full["FORWARD_PORT"] = str(forward)
        full.update(env)
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCH], env=full, cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        line = self.proc.stderr.readline().decode()
        m = re.search(r"outbound=([\d.]+):(\d+) inbound=([\d.]+):(\d+) admin=([\d.]+):(\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"proxy did not start: {line!r}")
        self.outbound = (m.group(1), int(m.group(2)))
        self.inbound = (m.group(3), int(m.group(4)))
        self.admin = (m.group(5), int(m.group(6)))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stderr.close()


def chain(hops: int, **env):
    """(client-facing address, [proxies]) for 0, 1 or 2 proxies in front of an upstream named by :authority."""
    if hops == 0:
        return None, []
    if hops == 1:
        p = Proxy(**env)
        return p.outbound, [p]
    server_side = Proxy(**env)
    client_side = Proxy(forward=server_side.inbound[1], **env)
    return client_side.outbound, [client_side, server_side]

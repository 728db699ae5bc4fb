"""What ``meshctl dashboard`` does, flag by flag: choose local or cluster, serve, print, open, block.

Local (a mesh from ``meshctl demo up``, or ``--prometheus-url``): this process
serves the app over that Prometheus and the proxies' tap.  In a cluster: as
``linkerd viz dashboard``, a port-forward through the API server to the viz web
deployment, which serves the same app (``docs/dashboard.md``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from meshctl.errors import MeshctlError

READY_POLL_S = 0.5


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    address: str = "127.0.0.1"
    port: int = 50750
    show: str = "meshctl"  # "meshctl" | "grafana" | "url"
    wait_s: float = 300.0
    prometheus_url: str | None = None
    grafana_url: str | None = None
    demo_dir: str | None = None
    enforced_host: str | None = None
    refresh_s: float = 5.0


def local_mesh_dir(options: Options, *, must_exist: bool) -> Path | None:
    """The local mesh's state directory (``--demo-dir``, else contract B's default); None when it is not
    named and holds no mesh.json (then the dashboard reads only the Prometheus it was given)."""
    from meshctl.demo import state

    if options.demo_dir:
        return Path(options.demo_dir)
    path = state.state_dir()
    return path if must_exist or (path / state.STATE_FILE).is_file() else None


def wants_local(options: Options, *, cluster_configured: bool) -> bool:
    """As ``meshctl viz stat``: --prometheus-url or --demo-dir, else a cluster when the command reads one
    (*cluster_configured*: ``meshctl.cli.viz.reads_cluster``), else the local mesh."""
    return bool(options.prometheus_url or options.demo_dir) or not cluster_configured


def wait_ready(url: str, wait_s: float, report) -> None:
    """Wait up to *wait_s* for Prometheus to answer ``/-/ready`` (linkerd's --wait waits for its dashboard)."""
    import httpx

    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            r = httpx.get(f"{url.rstrip('/')}/-/ready", timeout=2.0)
            if r.status_code == 200:
                return
            problem = f"answered {r.status_code}"
        except httpx.HTTPError as exc:
            problem = str(exc) or type(exc).__name__
        if time.monotonic() >= deadline:
            raise MeshctlError(f"Prometheus at {url} is not ready after waiting {wait_s:g}s: {problem}")
        if not said:
            report(f"Waiting for Prometheus at {url} to become ready ({problem})")
            said = True
        time.sleep(READY_POLL_S)


def local_prometheus(options: Options) -> tuple[str, Path | None]:
    """The Prometheus URL and the local mesh's directory the dashboard serves (errors before binding)."""
    directory = local_mesh_dir(options, must_exist=options.prometheus_url is None)
    prometheus_url = options.prometheus_url
    if prometheus_url is None:
        # No URL given: the local mesh must be up now to say where its Prometheus is.  (With
        # --prometheus-url, mesh.json is read per request, so `demo up` can start us first.)
        from meshctl.demo import state

        prometheus_url = state.load(directory).prometheus_url
        if not prometheus_url:
            raise MeshctlError(f"{directory / 'mesh.json'}: the local mesh runs no Prometheus (prometheus_url is "
                               "empty): give --prometheus-url")
    return prometheus_url, directory


def build_local_app(options: Options, prometheus_url: str, directory: Path | None, port: int):
    from meshctl.dashboard.app import Settings, create_app
    from meshctl.dashboard.hosts import HostPolicy
    from meshctl.dashboard.source import LocalSource

    policy = (HostPolicy.from_regex(options.enforced_host) if options.enforced_host
              else HostPolicy.for_address(options.address, port))
    source = LocalSource(prometheus_url, directory)
    return create_app(source, Settings(policy=policy, grafana_url=options.grafana_url, refresh_s=options.refresh_s))


def main(options: Options, global_options, *, cluster_configured: bool, out, report) -> None:
    from meshctl.dashboard import serve

    if not wants_local(options, cluster_configured=cluster_configured):
        from meshctl.dashboard import portforward

        return portforward.main(options, global_options, out=out, report=report)
    if options.show == "grafana" and not options.grafana_url:
        raise MeshctlError("--show grafana: no Grafana is configured (give --grafana-url)")
    prometheus_url, directory = local_prometheus(options)
    listener = serve.bind(options.address, options.port)
    try:
        wait_ready(prometheus_url, options.wait_s, report)
        app = build_local_app(options, prometheus_url, directory, listener.port)
    except BaseException:
        listener.sock.close()
        raise
    announce(listener.url, options, out=out, report=report)
    serve.run(app, listener)


def announce(url: str, options: Options, *, out, report) -> None:
    """Print the URLs (stdout: they are the command's data) and open a browser where a person can see one."""
    from meshctl.dashboard import serve

    out("meshctl dashboard available at:")
    out(url)
    if options.grafana_url:
        out("Grafana dashboard available at:")
        out(options.grafana_url)
    if options.show == "url":
        return
    target, name = (options.grafana_url, "Grafana") if options.show == "grafana" else (url, "meshctl")
    if serve.can_open_browser() and serve.open_browser(target):
        report(f"Opening {name} dashboard in the default browser")
    else:
        report(f"Visit {target} in your browser to view the {name} dashboard")

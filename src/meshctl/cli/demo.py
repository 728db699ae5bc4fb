"""``meshctl demo``: the meshed three-API shop on this machine.

``up`` / ``status`` / ``down`` keep a local mesh running (daemons, state in one directory);
``load`` is the walkthrough's ``ab``; ``apply``, ``edit`` and ``set`` change it while it runs;
``run`` is the one-shot version (up, traffic, tables, down).
"""

from __future__ import annotations

import typer

from meshctl.cli import _common


def render_tables(stats, routes, edges) -> None:
    """The one-shot demo's summary: the tables ``meshctl viz`` prints, from the same rows and renderers."""
    from meshctl.viz import tables

    print("$ meshctl viz stat -n shop deploy")
    print(tables.stat_table(stats))
    print("$ meshctl viz routes deploy/product-gateway-api --to svc/price-api-svc -o wide")
    print(tables.routes_table(routes, wide=True))
    print("$ meshctl viz edges -n shop deploy -o wide")
    print(tables.edges_table(edges, wide=True), end="")


DirOption = typer.Option(None, "--dir", envvar="MESHCTL_DEMO_DIR",
                         help="State directory of the local mesh (default: ~/.local/state/meshctl/demo).")


def _demo(dir: str | None):
    from meshctl.demo.local import LocalDemo

    return LocalDemo(dir, progress=lambda m: _common.report(f"• {m}"))


def _print_where(mesh) -> None:
    """Where to look, on stdout: the URLs a user copies."""
    print(f"gateway:    {mesh.gateway_url}   (try: ab -n 1000 {mesh.gateway_url}/api/products/1)")
    print(f"dashboard:  {mesh.dashboard_url or '- (meshctl dashboard is not available in this version)'}")
    print(f"prometheus: {mesh.prometheus_url or '-'}")


def register(app: typer.Typer) -> None:
    group = typer.Typer(name="demo", no_args_is_help=True,
                        help="The three-API shop of the walkthrough, meshed on this machine (no cluster).")

    @group.command("up")
    def up(
        dir: str = DirOption,
        netns: bool = typer.Option(False, "--netns", help="Each pod in its own network namespace with iptables "
                                   "redirection, as in a cluster (root only)."),
        foreground: bool = typer.Option(False, "--foreground", help="Stay in the foreground; Ctrl-C brings the mesh down."),
        address_prefix: str = typer.Option("127.0.10", "--address-prefix", help="Loopback /24 of the pods (without --netns)."),
        traffic: float = typer.Option(0.0, "--traffic", help="Keep sending this many requests per second to the gateway "
                                      "(a load generator process, stopped by down)."),
    ) -> None:
        """Start the local mesh (control plane, three APIs with their proxies, Prometheus, dashboard) and return when it is ready."""
        import hashlib
        import os

        from meshctl import demo as core
        from meshctl.demo import state
        from meshctl.errors import MeshctlError, UsageError

        d = _demo(dir)
        if netns:
            if os.geteuid() != 0:
                raise MeshctlError("demo up --netns needs root (it creates network namespaces and iptables rules); "
                                   "run it with sudo, or without --netns on loopback")
            # Names carry a hash of the state directory: two demos never share a namespace.
            digest = hashlib.sha256(str(d.dir).encode()).hexdigest()
            lab = "md" + digest[:6]
            from meshctl.demo import netns as netns_core
            from meshctl.demo import state as state_core

            # The default directory's demo gets 198.18.0.0/24 (the addresses of the docs);
            # another directory's starts looking at a /24 of its own.
            preferred = 0 if d.dir == state_core.state_dir().absolute() else int(digest[6:8], 16)
            plan = core.Plan(prefix="", price_failure_rate=0.0, netns_id=lab,
                             netns_net=d.recorded_netns_net() or netns_core.choose_net(preferred))
        else:
            plan = core.Plan(prefix=core.validate_prefix(address_prefix), price_failure_rate=0.0)
        if not 0 <= traffic <= 200:
            raise UsageError(f"--traffic: expected requests per second in [0, 200], got {traffic:g}")
        core.check_samples()
        outcome = d.up(plan, traffic=traffic)
        mesh = state.load(d.dir)
        if outcome == "already up":
            running = "with --netns" if d.plan and d.plan.netns_id else "on loopback"
            _common.report(f"the local mesh in {d.dir} is already up ({running})")
            if d.plan and (bool(d.plan.netns_id) != netns or (not netns and d.plan.prefix != plan.prefix)):
                _common.report("  (it was started with other flags: `meshctl demo down` first to change them)")
        elif outcome.startswith("restarted"):
            _common.report(f"√ {outcome}")
        else:
            _common.report(f"√ the shop is meshed and ready (state in {d.dir}; stop it with: meshctl demo down)")
        _print_where(mesh)
        if foreground:
            import signal
            import threading

            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            _common.report("running in the foreground; Ctrl-C stops it")
            while not stop.wait(2.0):
                pass
            d.down()
            _common.report("√ stopped")

    @group.command("status")
    def status(
        dir: str = DirOption,
        output: _common.TableFormat = typer.Option(_common.TableFormat.table, "--output", "-o", help="table, wide, json or yaml"),
    ) -> None:
        """Every process of the local mesh, with its health."""
        rows = _demo(dir).status()
        if output in (_common.TableFormat.json, _common.TableFormat.yaml):
            import dataclasses

            data = [dataclasses.asdict(r) for r in rows]
            print(_common.dump(data, output.value), end="")
        else:
            wide = output is _common.TableFormat.wide
            header = ["NAME", "PID", "STATE", "HEALTH", "ADDRESS"] + (["LOG"] if wide else [])
            table = [header] + [[r.name, str(r.pid), r.state, r.health, r.address or "-"] + ([r.log] if wide else [])
                                for r in rows]
            widths = [max(len(row[i]) for row in table) for i in range(len(header))]
            for row in table:
                print("   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if any(r.state != "running" or r.health == "not ready" for r in rows):
            _common.report("some processes are not running or not ready: `meshctl demo up` restarts what is missing")
            raise typer.Exit(1)

    @group.command("down")
    def down(dir: str = DirOption) -> None:
        """Stop every process of the local mesh and remove its network namespaces."""
        d = _demo(dir)
        if d.down():
            _common.report(f"√ the local mesh in {d.dir} is down")
        else:
            _common.report(f"nothing to stop: no local mesh in {d.dir}")

    @group.command("load")
    def load(
        url: str = typer.Argument(None, help="URL to load (default: the gateway's /api/products/1)."),
        requests: int = typer.Option(1000, "-n", "--requests", help="Number of requests (ab -n)."),
        concurrency: int = typer.Option(None, "-c", "--concurrency", help="Requests in flight at once (ab -c; default 10, "
                                        "at most -n)."),
        rps: float = typer.Option(None, "--rps", help="At most this many requests per second, in total."),
        max_time: str = typer.Option("5m", "--max-time", help="Stop after this long whatever is left (Go duration)."),
        dir: str = DirOption,
        output: _common.ReportFormat = typer.Option(_common.ReportFormat.table, "--output", "-o", help="table, json or yaml."),
    ) -> None:
        """Send ab's load to the gateway (ab -n 1000 -c 10 http://GATEWAY/api/products/1) and print ab's summary."""
        import sys

        from meshctl.demo import load as load_core
        from meshctl.demo import state
        from meshctl.errors import UsageError
        from meshctl_proxy.config import parse_duration

        try:
            seconds = parse_duration(max_time)
        except ValueError as exc:
            raise UsageError(f"--max-time: {exc}") from None
        if url is None:
            url = state.load(dir).gateway_url + "/api/products/1"
        progress = _progress_bar(requests) if sys.stderr.isatty() else (lambda done, total: None)
        if concurrency is None:
            concurrency = max(1, min(10, requests))
        result = load_core.run_load(url, total=requests, concurrency=concurrency, rps=rps, max_seconds=seconds,
                                    on_progress=progress)
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        if output in (_common.ReportFormat.json, _common.ReportFormat.yaml):
            print(_common.dump(result.to_dict(), output.value), end="")
        else:
            print(result.render())

    @group.command("apply")
    def apply(
        file: str = typer.Option(..., "-f", "--filename", help="ServiceProfile YAML/JSON file, or - for stdin."),
        dir: str = DirOption,
    ) -> None:
        """Apply ServiceProfiles to the running mesh, as kubectl apply does; the proxies pick them up without a restart."""
        from meshctl.cli.profile import _read, _source
        from meshctl.demo import live

        d = _demo(dir)
        plan = d.load_plan()
        profiles = live.parse_profiles(_read(file), source=_source(file))
        for result in live.apply_profiles(d.dir / "registry.json", plan.destination_addr, profiles):
            print(result)

    @group.command("edit")
    def edit(
        resource: str = typer.Argument(..., help="sp/NAME (serviceprofile/NAME), e.g. sp/price-api-svc.shop.svc.cluster.local"),
        dir: str = DirOption,
    ) -> None:
        """Edit a ServiceProfile of the running mesh in $EDITOR, validate it and apply it (kubectl edit)."""
        import os
        import shlex
        import subprocess
        import tempfile

        from meshctl.demo import live
        from meshctl.errors import InputError, MeshctlError, UsageError
        from meshctl.profiles import text

        kind, _, name = resource.partition("/")
        if kind.lower() not in ("sp", "serviceprofile", "serviceprofiles", "serviceprofile.meshctl.io") or not name:
            raise UsageError(f"expected sp/NAME (a ServiceProfile), got {resource!r}")
        d = _demo(dir)
        plan = d.load_plan()
        registry = d.dir / "registry.json"
        before = text.dump(live.current_profile(registry, name), "yaml")
        editor = os.environ.get("KUBE_EDITOR") or os.environ.get("EDITOR") or "vi"
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=f"{name}-", delete=False) as f:
            f.write(before)
        try:
            try:
                rc = subprocess.run([*shlex.split(editor), f.name]).returncode
            except OSError as exc:
                raise MeshctlError(f"cannot run the editor {editor!r}: {exc.strerror or exc} (set EDITOR)") from None
            if rc != 0:
                raise MeshctlError(f"the editor {editor!r} exited with {rc}; nothing applied")
            after = open(f.name, "rb").read()
            if after.decode(errors="replace") == before:
                _common.report("Edit cancelled, no changes made.")
                return
            try:
                profiles = live.parse_profiles(after, source=f.name)
            except InputError as exc:
                keep = f.name
                f = None  # keep the user's edits
                raise InputError(f"{exc} (your edits are kept in {keep})") from None
            if [p["metadata"]["name"] for p in profiles] != [name]:
                raise InputError(f"{f.name}: expected exactly the ServiceProfile {name}")
            for result in live.apply_profiles(registry, plan.destination_addr, profiles):
                print(str(result).replace(" configured", " edited"))
        finally:
            if f is not None:
                os.unlink(f.name)

    @group.command("set")
    def set_(
        workload: str = typer.Argument(..., help="product-gateway-api, product-api or price-api"),
        failure_rate: float = typer.Option(None, "--failure-rate", help="Share of requests the app fails with a 500, in [0, 1]."),
        latency: str = typer.Option(None, "--latency", help="Extra latency of every request (Go duration, e.g. 50ms)."),
        dir: str = DirOption,
    ) -> None:
        """Change a sample app's failure rate or latency while it runs (the demo's knob)."""
        from meshctl.demo import live
        from meshctl.errors import UsageError
        from meshctl_proxy.config import parse_duration

        if failure_rate is None and latency is None:
            raise UsageError("give --failure-rate and/or --latency")
        if failure_rate is not None and not 0 <= failure_rate <= 1:
            raise UsageError(f"--failure-rate: expected a share in [0, 1], got {failure_rate}")
        latency_ms = None
        if latency is not None:
            try:
                latency_ms = parse_duration(latency) * 1000
            except ValueError as exc:
                raise UsageError(f"--latency: {exc}") from None
        d = _demo(dir)
        plan = d.load_plan()
        names = [w.name for w in plan.workloads]
        if workload not in names:
            raise UsageError(f"no workload {workload!r} in the demo (it has: {', '.join(names)})")
        now = live.set_knobs(d.dir / "knobs", workload, failure_rate=failure_rate, latency_ms=latency_ms)
        print(f"{workload}: failure rate {now['failure_rate'] * 100:g}%, latency {now['latency_ms']:g}ms")

    @group.command("run")
    def run(
        ctx: typer.Context,
        duration: str = typer.Option("20s", "--duration", help="How long to send traffic (Go duration, e.g. 20s, 2m)."),
        rps: float = typer.Option(20.0, "--rps", help="Requests per second sent to the gateway."),
        price_failure_rate: float = typer.Option(0.1, "--price-failure-rate", help="Share of price-api requests that fail (retried by the mesh)."),
        price_latency_ms: float = typer.Option(0.0, "--price-latency-ms", help="Extra latency of price-api."),
        address_prefix: str = typer.Option("127.0.10", "--address-prefix", help="Loopback /24 the demo's pods use."),
        workdir: str = typer.Option(None, "--dir", help="Keep certificates, registry and logs here (default: a temporary directory, removed)."),
        output: _common.ReportFormat = typer.Option(_common.ReportFormat.table, "--output", "-o", help="table, json or yaml."),
    ) -> None:
        """One shot: mesh the three APIs, send traffic, show success rate, RPS and latency, stop everything."""
        _run_once(ctx, duration=duration, rps=rps, price_failure_rate=price_failure_rate,
                  price_latency_ms=price_latency_ms, address_prefix=address_prefix, workdir=workdir, output=output)

    app.add_typer(group)


def _progress_bar(total: int):
    """A one-line progress bar on stderr (only called on a terminal)."""
    import sys
    import time

    last = [0.0]

    def show(done: int, total_: int) -> None:
        now = time.monotonic()
        if done != total_ and now - last[0] < 0.1:
            return
        last[0] = now
        width = 40
        filled = int(width * done / max(1, total_))
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total_} requests")
        sys.stderr.flush()

    return show


def _run_once(ctx, *, duration, rps, price_failure_rate, price_latency_ms, address_prefix, workdir, output) -> None:
    import tempfile
    import time
    from pathlib import Path

    from meshctl import demo as core
    from meshctl.errors import UsageError
    from meshctl.viz import tables
    from meshctl_proxy.config import parse_duration

    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise UsageError(f"--duration: {exc}") from None
    if not 0 < rps <= 500:
        raise UsageError(f"--rps: expected a rate in (0, 500], got {rps}")
    if not 0 <= price_failure_rate < 1:
        raise UsageError(f"--price-failure-rate: expected a share in [0, 1), got {price_failure_rate}")
    plan = core.Plan(prefix=core.validate_prefix(address_prefix), price_failure_rate=price_failure_rate,
                     price_latency_ms=price_latency_ms)
    verbose = _common.global_options(ctx).verbose
    tmp = None
    if workdir:
        path = Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="meshctl-demo-")
        path = Path(tmp.name)
    report = _common.report
    try:
        with core.DemoRun(plan, path, progress=lambda m: report(f"• {m}")) as run:
            report("√ the shop is meshed: mTLS between proxies, endpoints and ServiceProfiles from the destination service")
            run.wait_scraped()
            report(f"• sending {rps:g} rps to product-gateway-api for {duration} (Prometheus at {run.prometheus_url})")
            # Progress every five seconds of traffic (every second with --verbose).
            every = max(1, int(rps)) * (1 if verbose else 5)

            def tick(done: int, total: int) -> None:
                if done == total or (done - 1) % every == 0:
                    report(f"  {done}/{total} requests sent")

            started = time.time()
            codes = run.drive(rps=rps, seconds=seconds, on_tick=tick)
            ended = time.time()
            stats, routes, edges = _summary(run, started, ended)
        if output in (_common.ReportFormat.json, _common.ReportFormat.yaml):
            data = {"ingress": {"statusCodes": codes}, "stat": tables.stat_json(stats),
                    "routes": tables.routes_json(routes, wide=True), "edges": tables.edges_json(edges)}
            print(_common.dump(data, output.value), end="")
        else:
            render_tables(stats, routes, edges)
        report(f"ingress status codes: {', '.join(f'{k}: {v}' for k, v in sorted(codes.items()))}")
    finally:
        if tmp is not None:
            tmp.cleanup()
        else:
            report(f"certificates, registry and logs kept in {path}")


def _summary(run, started: float, ended: float):
    """The run's golden metrics from its Prometheus: the traffic's whole span, rates per second of traffic."""
    import dataclasses
    import time

    from meshctl.viz import queries
    from meshctl.viz.promclient import PrometheusClient
    from meshctl.viz.resources import Resource

    # Wait for the scrape after the last request, then query a range one scrape interval wider
    # than the traffic on each side (the proxies' series appear with their first request).
    interval = run.mesh.scrape_interval_s
    time.sleep(interval + 0.5)
    at = ended + interval
    span = at - started + interval
    from meshctl.demo import NAMESPACE as ns

    identities = {(ns, w.pod): w.identity for w in run.plan.workloads}
    with PrometheusClient(run.prometheus_url) as client:
        stats = queries.stat(client, Resource("deployment", None, ns), window_s=span, at=at)
        routes = queries.routes(client, Resource("deployment", "product-gateway-api", ns), window_s=span, at=at,
                                to=Resource("service", "price-api-svc", ns))
        edges = queries.edges(client, "deployment", namespace=ns, at=at,
                              identity_of=lambda namespace, pod: identities.get((namespace, pod)))
    # Rates per second of traffic, not of the wider range queried.
    seconds = max(ended - started, 1e-3)
    stats = [dataclasses.replace(r, window_s=seconds) for r in stats]
    routes = [dataclasses.replace(r, window_s=seconds) for r in routes]
    return stats, routes, edges

"""``meshctl demo``: the meshed three-API shop on this machine.

``up`` / ``status`` / ``down`` keep a local mesh running (daemons, state in one directory);
``load`` is the walkthrough's ``ab``; ``apply``, ``edit`` and ``set`` change it while it runs;
``run`` is the one-shot version (up, traffic, tables, down).
"""

from __future__ import annotations

import json

import typer

from meshctl.cli import _common


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms" if value >= 10 else f"{value:.1f}ms"


def render_tables(stats, routes, edges) -> None:
    from rich.console import Console
    from rich.table import Table

    import sys

    # Piped output keeps whole columns (rich would squeeze to 80); tables size to content anyway.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 250)
    t = Table(title="meshctl viz stat -n shop deploy", title_justify="left", box=None, pad_edge=False)
    for col in ("NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TLS"):
        t.add_column(col, justify="left" if col == "NAME" else "right")
    for s in stats:
        t.add_row(s.name, "1/1", _pct(s.success_rate), f"{s.rps:.1f}rps", _ms(s.p50_ms), _ms(s.p95_ms), _ms(s.p99_ms),
                  _pct(s.meshed_share))
    console.print(t)
    console.print()
    r = Table(title="meshctl viz routes deploy/product-gateway-api (outbound)", title_justify="left", box=None, pad_edge=False)
    for col in ("ROUTE", "SERVICE", "EFFECTIVE_SUCCESS", "EFFECTIVE_RPS", "ACTUAL_SUCCESS", "ACTUAL_RPS", "LATENCY_P50", "LATENCY_P99"):
        r.add_column(col, justify="left" if col in ("ROUTE", "SERVICE") else "right")
    for s in routes:
        route, _, dst = s.name.rpartition(" [")
        actual_rps = (s.actual_requests or 0) / s.seconds if s.seconds > 0 else 0
        r.add_row(route, dst.rstrip("]"), _pct(s.success_rate), f"{s.rps:.1f}rps", _pct(s.actual_success_rate),
                  f"{actual_rps:.1f}rps", _ms(s.p50_ms), _ms(s.p99_ms))
    console.print(r)
    console.print()
    e = Table(title="meshctl viz edges -n shop deploy", title_justify="left", box=None, pad_edge=False)
    for col in ("SRC", "DST", "REQUESTS", "CLIENT_ID", "SERVER_ID", "SECURED"):
        e.add_column(col)
    for edge in edges:
        e.add_row(edge.src, edge.dst, str(round(edge.requests)), edge.client_id, edge.server_id or "-",
                  "√" if edge.secured else "×")
    console.print(e)


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
        from meshctl.errors import MeshctlError

        d = _demo(dir)
        if netns:
            if os.geteuid() != 0:
                raise MeshctlError("demo up --netns needs root (it creates network namespaces and iptables rules); "
                                   "run it with sudo, or without --netns on loopback")
            # Names carry a hash of the state directory: two demos never share a namespace.
            lab = "md" + hashlib.sha256(str(d.dir).encode()).hexdigest()[:6]
            plan = core.Plan(prefix="", price_failure_rate=0.0, netns_id=lab)
        else:
            plan = core.Plan(prefix=core.validate_prefix(address_prefix), price_failure_rate=0.0)
        if not 0 <= traffic <= 200:
            raise MeshctlError(f"--traffic: expected requests per second in [0, 200], got {traffic:g}")
        core.check_samples()
        outcome = d.up(plan, traffic=traffic)
        mesh = state.load(d.dir)
        if outcome == "already up":
            _common.report(f"the local mesh in {d.dir} is already up")
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
            if output is _common.TableFormat.json:
                print(json.dumps(data, indent=2))
            else:
                import yaml

                print(yaml.safe_dump(data, sort_keys=False), end="")
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
        concurrency: int = typer.Option(10, "-c", "--concurrency", help="Requests in flight at once (ab -c)."),
        rps: float = typer.Option(None, "--rps", help="At most this many requests per second, in total."),
        max_time: str = typer.Option("5m", "--max-time", help="Stop after this long whatever is left (Go duration)."),
        dir: str = DirOption,
        output: _common.TableFormat = typer.Option(_common.TableFormat.table, "--output", "-o", help="table or json"),
    ) -> None:
        """Send ab's load to the gateway (ab -n 1000 -c 10 http://GATEWAY/api/products/1) and print ab's summary."""
        import sys

        from meshctl.demo import load as load_core
        from meshctl.demo import state
        from meshctl.errors import MeshctlError
        from meshctl_proxy.config import parse_duration

        try:
            seconds = parse_duration(max_time)
        except ValueError as exc:
            raise MeshctlError(f"--max-time: {exc}") from None
        if url is None:
            url = state.load(dir).gateway_url + "/api/products/1"
        progress = _progress_bar(requests) if sys.stderr.isatty() else (lambda done, total: None)
        result = load_core.run_load(url, total=requests, concurrency=concurrency, rps=rps, max_seconds=seconds,
                                    on_progress=progress)
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        if output in (_common.TableFormat.json, _common.TableFormat.yaml):
            print(json.dumps(result.to_dict(), indent=2))
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
        from meshctl.errors import InputError, MeshctlError
        from meshctl.profiles import text

        kind, _, name = resource.partition("/")
        if kind.lower() not in ("sp", "serviceprofile", "serviceprofiles", "serviceprofile.meshctl.io") or not name:
            raise InputError(f"expected sp/NAME (a ServiceProfile), got {resource!r}")
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
        from meshctl.errors import InputError
        from meshctl_proxy.config import parse_duration

        if failure_rate is None and latency is None:
            raise InputError("give --failure-rate and/or --latency")
        if failure_rate is not None and not 0 <= failure_rate <= 1:
            raise InputError(f"--failure-rate: expected a share in [0, 1], got {failure_rate}")
        latency_ms = None
        if latency is not None:
            try:
                latency_ms = parse_duration(latency) * 1000
            except ValueError as exc:
                raise InputError(f"--latency: {exc}") from None
        d = _demo(dir)
        plan = d.load_plan()
        names = [w.name for w in plan.workloads]
        if workload not in names:
            raise InputError(f"no workload {workload!r} in the demo (it has: {', '.join(names)})")
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
        output: _common.TableFormat = typer.Option(_common.TableFormat.table, "--output", "-o", help="table or json"),
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
    from pathlib import Path

    from meshctl import demo as core
    from meshctl import viz
    from meshctl.errors import MeshctlError
    from meshctl_proxy.config import parse_duration

    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise MeshctlError(f"--duration: {exc}") from None
    if not 0 < rps <= 500:
        raise MeshctlError(f"--rps: expected a rate in (0, 500], got {rps}")
    if not 0 <= price_failure_rate < 1:
        raise MeshctlError(f"--price-failure-rate: expected a share in [0, 1), got {price_failure_rate}")
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
            before = run.scrape()
            report(f"• sending {rps:g} rps to product-gateway-api for {duration}")
            # Progress every five seconds of traffic (every second with --verbose).
            every = max(1, int(rps)) * (1 if verbose else 5)

            def tick(done: int, total: int) -> None:
                if done == total or (done - 1) % every == 0:
                    report(f"  {done}/{total} requests sent")

            codes = run.drive(rps=rps, seconds=seconds, on_tick=tick)
            after = run.scrape()
        window = {name: after[name].minus(before[name]) for name in after}
        stats = viz.workload_stats(window)
        routes = viz.route_stats(window["product-gateway-api"])
        edges = viz.edges(window, {w.name: w.identity for w in plan.workloads}, totals=after)
        if output in (_common.TableFormat.json, _common.TableFormat.yaml):
            data = {"ingress": {"statusCodes": codes}, "stat": [s.to_dict() for s in stats],
                    "routes": [s.to_dict() for s in routes], "edges": [e.to_dict() for e in edges]}
            print(json.dumps(data, indent=2))
        else:
            render_tables(stats, routes, edges)
        report(f"ingress status codes: {', '.join(f'{k}: {v}' for k, v in sorted(codes.items()))}")
    finally:
        if tmp is not None:
            tmp.cleanup()
        else:
            report(f"certificates, registry and logs kept in {path}")

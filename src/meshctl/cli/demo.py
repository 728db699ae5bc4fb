"""``meshctl demo``: run the meshed three-API shop locally and show its golden metrics."""

from __future__ import annotations

import sys

import typer

from meshctl.cli import _common


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms" if value >= 10 else f"{value:.1f}ms"


def render_tables(stats, routes, edges, *, wide: bool = False) -> str:
    """The demo's three tables as `linkerd viz stat|routes|edges` print them; never truncated.

    Identities print short (``sa.ns``) unless ``wide``, as `linkerd viz edges -o wide` does.
    """
    ident = (lambda i: i or "-") if wide else _common.short_identity
    out = ["meshctl viz stat -n shop deploy", _common.render_table(
        ["NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TLS"],
        [[s.name, "1/1", _pct(s.success_rate), f"{s.rps:.1f}rps", _ms(s.p50_ms), _ms(s.p95_ms), _ms(s.p99_ms),
          _pct(s.meshed_share)] for s in stats],
        right={"MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TLS"})]
    rows = []
    for s in routes:
        route, _, dst = s.name.rpartition(" [")
        actual_rps = (s.actual_requests or 0) / s.seconds if s.seconds > 0 else 0
        rows.append([route, dst.rstrip("]"), _pct(s.success_rate), f"{s.rps:.1f}rps", _pct(s.actual_success_rate),
                     f"{actual_rps:.1f}rps", _ms(s.p50_ms), _ms(s.p99_ms)])
    out += ["meshctl viz routes deploy/product-gateway-api (outbound)", _common.render_table(
        ["ROUTE", "SERVICE", "EFFECTIVE_SUCCESS", "EFFECTIVE_RPS", "ACTUAL_SUCCESS", "ACTUAL_RPS", "LATENCY_P50",
         "LATENCY_P99"], rows,
        right={"EFFECTIVE_SUCCESS", "EFFECTIVE_RPS", "ACTUAL_SUCCESS", "ACTUAL_RPS", "LATENCY_P50", "LATENCY_P99"})]
    out += ["meshctl viz edges -n shop deploy", _common.render_table(
        ["SRC", "DST", "REQUESTS", "CLIENT_ID", "SERVER_ID", "SECURED"],
        [[e.src, e.dst, str(round(e.requests)), ident(e.client_id), ident(e.server_id),
          _common.colorize_marks("√" if e.secured else "×", sys.stdout)] for e in edges])]
    return "\n".join(out)


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        ctx: typer.Context,
        duration: str = typer.Option("20s", "--duration", help="How long to send traffic (Go duration, e.g. 20s, 2m)."),
        rps: float = typer.Option(20.0, "--rps", help="Requests per second sent to the gateway."),
        price_failure_rate: float = typer.Option(0.1, "--price-failure-rate", help="Share of price-api requests that fail (retried by the mesh)."),
        price_latency_ms: float = typer.Option(0.0, "--price-latency-ms", help="Extra latency of price-api."),
        address_prefix: str = typer.Option("127.0.10", "--address-prefix", help="Loopback /24 the demo's pods use."),
        workdir: str = typer.Option(None, "--dir", help="Keep certificates, registry and logs here (default: a temporary directory, removed)."),
        output: _common.TableFormat = typer.Option(_common.TableFormat.table, "--output", "-o", help="table, wide (whole identities), json or yaml."),
    ) -> None:
        """Run the three sample APIs meshed on this machine, send traffic, and show success rate, RPS and latency."""
        import tempfile
        from pathlib import Path

        from meshctl import demo as core
        from meshctl import viz
        from meshctl.errors import UsageError
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
                report(f"√ the shop is meshed: mTLS between proxies, endpoints and ServiceProfiles from the destination service")
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
                sys.stdout.write(_common.dump(data, output.value))
            else:
                sys.stdout.write(render_tables(stats, routes, edges, wide=output == _common.TableFormat.wide))
            report(f"ingress status codes: {', '.join(f'{k}: {v}' for k, v in sorted(codes.items()))}")
        finally:
            if tmp is not None:
                tmp.cleanup()
            else:
                report(f"certificates, registry and logs kept in {path}")

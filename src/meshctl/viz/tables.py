"""Text and JSON renderings of the query rows, with linkerd viz's columns and formats.

Pure functions from rows to strings or JSON-ready values: the CLI prints them,
``meshctl demo`` prints them, the dashboard serves the same JSON.  Tables are
plain text (columns padded with spaces, as Go's tabwriter pads linkerd's), never
truncated to the terminal's width and carrying no colour, so a pipe and a
terminal read the same.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshctl.viz.queries import DEFAULT_ROUTE, EdgeRow, RouteRow, StatRow
from meshctl.viz.resources import SHORT

PADDING = 3  # linkerd's tabwriter padding
OK = "\u221a"  # √, linkerd's okStatus


def columns(headers: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> str:
    """Rows under headers, the first *left* columns left-aligned and the rest right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[i]) if i < left else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append((" " * PADDING).join(cells).rstrip())
    return "\n".join(lines) + "\n"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def rate(value: float | None, unit: str = "rps") -> str:
    return "-" if value is None else f"{value:.1f}{unit}"


def millis(value: float | None) -> str:
    # linkerd prints whole milliseconds; a meshed hop on one machine takes less than
    # one, so below 10ms one decimal is kept.
    if value is None:
        return "-"
    return f"{value:.0f}ms" if value >= 10 else f"{value:.1f}ms"


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


# --- stat ---------------------------------------------------------------------------------------

def _meshed(row: StatRow) -> str:
    return "-" if row.total_pods is None else f"{row.meshed_pods}/{row.total_pods}"


def stat_table(rows: Sequence[StatRow], *, wide: bool = False, all_namespaces: bool = False) -> str:
    """``viz stat``'s table; kinds after the first get a table of their own (``stat all``),
    their names prefixed with the kind, as linkerd prints them."""
    kinds = list(dict.fromkeys(r.kind for r in rows))
    out = []
    for kind in kinds:
        group = [r for r in rows if r.kind == kind]
        headers = (["NAMESPACE"] if all_namespaces else []) + ["NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50",
                                                               "LATENCY_P95", "LATENCY_P99", "TCP_CONN"]
        if wide:
            headers += ["READ_BYTES/SEC", "WRITE_BYTES/SEC"]
        body = []
        for r in group:
            name = f"{SHORT.get(r.kind, r.kind)}/{r.name}" if len(kinds) > 1 else r.name
            cells = ([r.namespace] if all_namespaces else []) + [
                name, _meshed(r), percent(r.success_rate), rate(r.rps), millis(r.latency_ms_p50),
                millis(r.latency_ms_p95), millis(r.latency_ms_p99),
                "-" if r.tcp_open_connections is None else f"{r.tcp_open_connections:.0f}"]
            if wide:
                cells += [rate(r.tcp_read_bytes_rate, "B/s"), rate(r.tcp_write_bytes_rate, "B/s")]
            body.append(cells)
        out.append(columns(headers, body, left=2 if all_namespaces else 1))
    return "\n".join(out)


def stat_json(rows: Sequence[StatRow]) -> list[dict]:
    """linkerd's ``stat -o json`` objects (success as a ratio, rps per second, latency in ms)."""
    out = []
    for r in rows:
        entry = {"namespace": r.namespace, "kind": r.kind, "name": r.name}
        if r.total_pods is not None:
            entry["meshed"] = _meshed(r)
        entry.update({
            "success": _round(r.success_rate), "rps": _round(r.rps),
            "latency_ms_p50": _round(r.latency_ms_p50, 3), "latency_ms_p95": _round(r.latency_ms_p95, 3),
            "latency_ms_p99": _round(r.latency_ms_p99, 3),
            "tcp_open_connections": None if r.tcp_open_connections is None else round(r.tcp_open_connections),
            "tcp_read_bytes_rate": _round(r.tcp_read_bytes_rate, 2),
            "tcp_write_bytes_rate": _round(r.tcp_write_bytes_rate, 2),
        })
        out.append(entry)
    return out


# --- routes -------------------------------------------------------------------------------------

def _by_resource(rows: Sequence[RouteRow]) -> dict[str, list[RouteRow]]:
    out: dict[str, list[RouteRow]] = {}
    for r in rows:
        out.setdefault(r.resource, []).append(r)
    return out


def routes_table(rows: Sequence[RouteRow], *, wide: bool = False) -> str:
    """``viz routes``'s table; with ``wide`` (outbound queries) effective next to actual success.
    One table per resource, headed ``==> deploy/web <==`` when there are several."""
    groups = _by_resource(rows)
    out = []
    for resource, group in groups.items():
        if wide:
            headers = ["ROUTE", "SERVICE", "EFFECTIVE_SUCCESS", "EFFECTIVE_RPS", "ACTUAL_SUCCESS", "ACTUAL_RPS",
                       "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"]
        else:
            headers = ["ROUTE", "SERVICE", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"]
        body = []
        for r in group:
            cells = [r.route, r.authority, percent(r.success_rate), rate(r.rps)]
            if wide:
                cells += [percent(r.actual_success_rate), rate(r.actual_rps)]
            cells += [millis(r.latency_ms_p50), millis(r.latency_ms_p95), millis(r.latency_ms_p99)]
            body.append(cells)
        text = columns(headers, body, left=2)
        out.append(f"==> {resource} <==\n{text}" if len(groups) > 1 else text)
    return "\n".join(out)


def routes_json(rows: Sequence[RouteRow], *, wide: bool = False) -> dict[str, list[dict]]:
    """linkerd's ``routes -o json``: resource -> rows; ``effective_*``/``actual_*`` when wide."""
    out: dict[str, list[dict]] = {}
    for resource, group in _by_resource(rows).items():
        entries = []
        for r in group:
            entry: dict = {"route": r.route, "authority": r.authority}
            if wide:
                entry.update({"effective_success": _round(r.success_rate), "effective_rps": _round(r.rps),
                              "actual_success": _round(r.actual_success_rate), "actual_rps": _round(r.actual_rps)})
            else:
                entry.update({"success": _round(r.success_rate), "rps": _round(r.rps)})
            entry.update({"latency_ms_p50": _round(r.latency_ms_p50, 3), "latency_ms_p95": _round(r.latency_ms_p95, 3),
                          "latency_ms_p99": _round(r.latency_ms_p99, 3)})
            entries.append(entry)
        out[resource] = entries
    return out


# --- edges --------------------------------------------------------------------------------------

def edges_table(rows: Sequence[EdgeRow], *, wide: bool = False) -> str:
    """``viz edges``: SECURED is √ or why not.  ``wide`` adds the identities, whole: linkerd
    trims them to ``sa.ns``, which drops the trust domain the proxies actually verified."""
    headers = ["SRC", "DST", "SRC_NS", "DST_NS"] + (["CLIENT_ID", "SERVER_ID"] if wide else []) + ["SECURED"]
    body = []
    for e in rows:
        cells = [e.src, e.dst, e.src_namespace, e.dst_namespace]
        if wide:
            cells += [e.client_id or "-", e.server_id or "-"]
        cells.append(OK if e.secured else e.no_tls_reason)
        body.append(cells)
    return columns(headers, body, left=len(headers))


def edges_json(rows: Sequence[EdgeRow]) -> list[dict]:
    return [{"src": e.src, "src_namespace": e.src_namespace, "dst": e.dst, "dst_namespace": e.dst_namespace,
             "client_id": e.client_id, "server_id": e.server_id, "no_tls_reason": e.no_tls_reason}
            for e in rows]


__all__ = ["DEFAULT_ROUTE", "columns", "edges_json", "edges_table", "routes_json", "routes_table",
           "stat_json", "stat_table"]

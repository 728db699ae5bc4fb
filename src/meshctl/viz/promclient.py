"""A small client for Prometheus' HTTP API (``/api/v1/query``, ``/api/v1/query_range``), over httpx.

Every failure is one :class:`MeshctlError` line naming the URL and what
Prometheus (or the network) said, so ``meshctl viz`` can print it and exit 1.
The same client talks to a local Prometheus (``--prometheus-url``) and to the
viz Prometheus through the Kubernetes API server's service proxy, as
``linkerd viz`` does (:func:`meshctl.k8s.service_proxy`): only the base URL
and the TLS/auth settings differ.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from meshctl.errors import MeshctlError


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One series of an instant vector: its labels and value (NaN when Prometheus says so)."""

    labels: Mapping[str, str]
    value: float

    def get(self, label: str) -> str:
        return self.labels.get(label, "")


@dataclasses.dataclass(frozen=True, slots=True)
class Series:
    """One series of a range query: its labels and (timestamp, value) points."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]


class PrometheusError(MeshctlError):
    """Prometheus could not be reached or refused the query."""


class PrometheusClient:
    """Queries one Prometheus; *url* is its base (``http://127.0.0.1:9090`` or an API-server proxy path).

    *transport*, *verify*, *cert* and *headers* go to :class:`httpx.Client` (the
    API server's CA, client certificate or bearer token); *display_url* is what
    error messages name when *url* is not what the user typed.
    """

    def __init__(self, url: str, *, timeout: float = 10.0, transport=None, verify=True, cert=None,
                 headers: Mapping[str, str] | None = None, display_url: str | None = None) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.display_url = display_url or self.url
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport, verify=verify,
                                  cert=cert, headers=dict(headers or {}))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "PrometheusClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _get(self, path: str, params: dict) -> object:
        import httpx

        where = f"prometheus at {self.display_url}"
        try:
            response = self._http.get(path, params=params)
        except httpx.TimeoutException:
            raise PrometheusError(f"{where}: timed out") from None
        except httpx.HTTPError as exc:
            raise PrometheusError(f"{where}: {_transport_reason(exc)}") from None
        try:
            body = response.json()
        except ValueError:
            text = " ".join(response.text.split())[:200] or "empty body"
            raise PrometheusError(f"{where}: HTTP {response.status_code}: {text}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            # Prometheus says "error"; an API server proxying it says "message" (a Status).
            error = (body.get("error") or body.get("message")) if isinstance(body, dict) else None
            kind = body.get("errorType") if isinstance(body, dict) else None
            said = f"{kind}: {error}" if kind and error else error or f"unexpected answer {str(body)[:200]}"
            raise PrometheusError(f"{where}: HTTP {response.status_code}: {said}")
        return body.get("data")

    def query(self, promql: str, *, at: float | None = None) -> list[Sample]:
        """An instant query; *at* (unix seconds) pins the evaluation time, so related queries agree."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        kind, result = _result(data, self.display_url)
        if kind == "scalar":
            return [Sample({}, _float(result[1]))]
        if kind != "vector":
            raise PrometheusError(f"prometheus at {self.display_url}: expected a vector, got {kind}")
        return [Sample(dict(s.get("metric") or {}), _float(s["value"][1])) for s in result]

    def query_range(self, promql: str, *, start: float, end: float, step: float) -> list[Series]:
        """A range query from *start* to *end* (unix seconds) every *step* seconds."""
        data = self._get("/api/v1/query_range", {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                                 "step": f"{step:g}"})
        kind, result = _result(data, self.display_url)
        if kind != "matrix":
            raise PrometheusError(f"prometheus at {self.display_url}: expected a matrix, got {kind}")
        return [Series(dict(s.get("metric") or {}), tuple((float(t), _float(v)) for t, v in s.get("values") or ()))
                for s in result]


def _result(data: object, url: str) -> tuple[str, list]:
    if not isinstance(data, dict) or "resultType" not in data:
        raise PrometheusError(f"prometheus at {url}: answer without a result")
    return data["resultType"], data.get("result") or []


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _transport_reason(exc) -> str:
    # httpx wraps the OS error; say what the socket said ("connection refused"), not the class name.
    cause = exc.__cause__ or exc.__context__
    while cause is not None and cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(exc) or str(cause or "") or type(exc).__name__
    if "Connection refused" in text or "Errno 111" in text:
        return "cannot connect: connection refused"
    if "Name or service not known" in text or "Temporary failure in name resolution" in text:
        return f"cannot connect: unknown host ({text})"
    return f"cannot connect: {text}"

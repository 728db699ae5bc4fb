"""``meshctl.viz.localprom``: Debian's Prometheus started on loopback, scraping real proxies."""

from __future__ import annotations

import httpx
import pytest
import yaml

from meshctl.errors import MeshctlError
from meshctl.viz import localprom

pytestmark = pytest.mark.slow


def test_series_carry_linkerds_target_labels(shop):
    r = httpx.get(f"{shop.prometheus_url}/api/v1/query", params={"query": 'up{job="linkerd-proxy"}'}).json()
    series = {s["metric"]["deployment"]: s for s in r["data"]["result"]}
    assert set(series) == {"product-gateway-api", "product-api", "price-api"}
    for name, s in series.items():
        assert s["value"][1] == "1"
        assert s["metric"]["namespace"] == "shop" and s["metric"]["pod"] == f"{name}-0"
    # The proxy's own pod labels are honoured, not renamed to exported_* duplicates.
    r = httpx.get(f"{shop.prometheus_url}/api/v1/series", params={"match[]": "response_total"}).json()
    assert not any(k.startswith("exported_") for s in r["data"] for k in s)


def test_write_config_is_what_prometheus_reads(tmp_path):
    path = localprom.write_config(tmp_path / "p.yml", [("127.0.0.1:4191", {"namespace": "ns", "pod": "p-0"})],
                                  scrape_interval="1s")
    doc = yaml.safe_load(path.read_text())
    (job,) = doc["scrape_configs"]
    assert job["job_name"] == "linkerd-proxy" and job["honor_labels"] is True
    assert job["static_configs"] == [{"targets": ["127.0.0.1:4191"], "labels": {"namespace": "ns", "pod": "p-0"}}]
    assert doc["global"]["scrape_timeout"] == "1s"
    with pytest.raises(MeshctlError, match="expected HOST:PORT, got 'nowhere'"):
        localprom.write_config(tmp_path / "q.yml", [("nowhere", {})])


def test_start_reports_a_bad_config_in_one_line(tmp_path):
    (tmp_path / "prometheus.yml").write_text("scrape_configs: [{job_name: x, scrape_interval: often}]\n")
    with pytest.raises(MeshctlError) as info:
        localprom.start(tmp_path)
    message = str(info.value)
    assert message.startswith("prometheus exited with") and "often" in message and "\n" not in message


def test_missing_binary_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(localprom, "DEBIAN_BINARY", str(tmp_path / "prometheus"))
    with pytest.raises(MeshctlError, match="install Debian's 'prometheus' package"):
        localprom.find_binary()

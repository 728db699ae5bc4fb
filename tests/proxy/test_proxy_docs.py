"""docs/proxy.md documents every MESHCTL_PROXY_* variable the proxy reads."""

from pathlib import Path

from meshctl_proxy import config
DOC = Path(__file__).resolve().parents[2] / "docs" / "proxy.md"


def test_every_setting_is_documented():
    text = DOC.read_text()
    missing = [s.env for s in config.SETTINGS if f"`{s.env}`" not in text]
    assert not missing

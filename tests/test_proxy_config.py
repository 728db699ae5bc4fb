"""The proxy configuration definition: one source for inject and the proxy."""

from __future__ import annotations

import pytest

from meshctl_proxy import config
def test_defaults_parse():
    cfg = config.load({})
    assert cfg.inbound_listen_addr == ("0.0.0.0", 4143)
    assert cfg.outbound_listen_addr == ("127.0.0.1", 4140)
    assert cfg.admin_listen_addr == ("0.0.0.0", 4191)
    assert cfg.default_inbound_policy == "all-unauthenticated"
    assert cfg.detect_timeout == 10.0


def test_every_setting_has_env_name_with_prefix_and_default_that_parses():
    for s in config.SETTINGS:
        assert s.env.startswith("MESHCTL_PROXY_") and s.env == s.env.upper()
        if s.default is not None:
            s.parse(s.default)


@pytest.mark.parametrize("var,value,fragment", [
    ("MESHCTL_PROXY_INBOUND_LISTEN_ADDR", "nope", "HOST:PORT"),
    ("MESHCTL_PROXY_ADMIN_LISTEN_ADDR", "0.0.0.0:70000", "out of range"),
    ("MESHCTL_PROXY_DETECT_TIMEOUT", "10 parsecs", "duration"),
    ("MESHCTL_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION", "25,x", "bad port"),
    ("MESHCTL_PROXY_DEFAULT_INBOUND_POLICY", "maybe", "all-unauthenticated"),
    ("MESHCTL_PROXY_SHUTDOWN_ENDPOINT_ENABLED", "perhaps", "true or false"),
    ("MESHCTL_PROXY_TYPO", "1", "unknown variable"),
])
def test_bad_values_name_the_variable(var, value, fragment):
    with pytest.raises(config.ConfigError) as exc:
        config.load({var: value})
    assert str(exc.value).startswith(var + ":")
    assert fragment in str(exc.value)


def test_parsers():
    assert config.parse_duration("1m30s") == 90.0
    assert config.parse_duration("250ms") == 0.25
    assert config.parse_ports("80, 8080-8082") == {80, 8080, 8081, 8082}
    assert config.parse_addr("[::1]:4140") == ("::1", 4140)
    assert config.parse_log_level("warn,meshctl=debug") == "warn"


def test_init_args():
    args = config.InitConfig(outbound_ports_to_ignore=("443",)).to_args()
    assert args[:6] == ["--incoming-proxy-port", "4143", "--outgoing-proxy-port", "4140", "--proxy-uid", "2102"]
    assert "--inbound-ports-to-ignore" in args and "4190,4191" in args
    assert "443" in args


def test_proxy_entry_point_rejects_bad_env(cli):
    r = cli("--version", module="meshctl_proxy")
    assert r.returncode == 0 and r.stdout.startswith("meshctl-proxy ")
    r = cli(module="meshctl_proxy", env={"MESHCTL_PROXY_ADMIN_LISTEN_ADDR": "bad"})
    assert r.returncode == 2
    assert "MESHCTL_PROXY_ADMIN_LISTEN_ADDR" in r.stderr


def test_proxy_config_fields_are_the_settings_with_their_parsers_types():
    import dataclasses
    import typing

    hints = typing.get_type_hints(config.ProxyConfig)
    assert [f.name for f in dataclasses.fields(config.ProxyConfig)] == [s.field for s in config.SETTINGS]
    for s in config.SETTINGS:
        parsed = typing.get_type_hints(s.parse)["return"]
        assert hints[s.field] == (parsed if s.default is not None else parsed | None), s.field

"""Contract B: ``meshctl.demo.state`` round-trips ``mesh.json`` and names the file on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshctl.demo import state
from meshctl.errors import MeshctlError


def sample_mesh(tmp_path: Path) -> state.LocalMesh:
    return state.LocalMesh(
        namespace="shop",
        prometheus_url="http://127.0.0.1:9090",
        dashboard_url=None,
        gateway_url="http://127.0.10.2:5000",
        tap=state.TapCredentials(identity="tap.meshctl.serviceaccount.identity.meshctl.cluster.local",
                                 cert=tmp_path / "tap.crt", key=tmp_path / "tap.key", trust_anchors=tmp_path / "ca.crt"),
        workloads=(state.LocalWorkload(
            namespace="shop", kind="deployment", name="price-api", pod="price-api-0", service="price-api-svc",
            identity="price-api.shop.serviceaccount.identity.meshctl.cluster.local", app="127.0.10.4:8080",
            proxy=state.ProxyAddrs(admin="127.0.10.4:4191", control="127.0.10.4:4190", inbound="127.0.10.4:4143",
                                   outbound="127.0.10.4:4140")),),
    )


def test_save_then_load_gives_back_the_same_mesh(tmp_path):
    mesh = sample_mesh(tmp_path)
    path = state.save(mesh, tmp_path)
    assert path == tmp_path / "mesh.json"
    assert state.load(tmp_path) == mesh
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["tap"]["cert"] == str(tmp_path / "tap.crt")
    assert data["workloads"][0]["proxy"]["control"] == "127.0.10.4:4190"
    assert [p.name for p in tmp_path.iterdir()] == ["mesh.json"]  # no temporary file left behind
    assert mesh.workload("price-api").app == "127.0.10.4:8080"
    with pytest.raises(MeshctlError, match="no workload 'nope' .*price-api"):
        mesh.workload("nope")


def test_unknown_keys_are_ignored_and_null_tap_reads_as_none(tmp_path):
    data = sample_mesh(tmp_path).to_dict() | {"tap": None, "future": 1}
    (tmp_path / "mesh.json").write_text(json.dumps(data))
    assert state.load(tmp_path).tap is None


def test_directory_comes_from_the_argument_then_the_environment_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MESHCTL_DEMO_DIR", str(tmp_path / "env"))
    assert state.state_dir(tmp_path / "arg") == tmp_path / "arg"
    assert state.state_dir() == tmp_path / "env"
    monkeypatch.delenv("MESHCTL_DEMO_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert state.state_dir() == tmp_path / ".local/state/meshctl/demo"


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("gateway_url"), "gateway_url: missing"),
    (lambda d: d.update(version=2), "version: this meshctl reads version 1, the file is version 2"),
    (lambda d: d["workloads"][0]["proxy"].update(admin=4191), r"workloads\[0\].proxy.admin: expected str, got int"),
    (lambda d: d["tap"].pop("key"), "tap.key: missing"),
    (lambda d: d.update(workloads={}), "workloads: expected list, got dict"),
])
def test_invalid_state_is_one_line_naming_file_and_field(tmp_path, edit, message):
    data = sample_mesh(tmp_path).to_dict()
    edit(data)
    (tmp_path / "mesh.json").write_text(json.dumps(data))
    with pytest.raises(MeshctlError, match=f"^{tmp_path / 'mesh.json'}: {message}$"):
        state.load(tmp_path)


def test_absent_or_garbled_state_names_the_file(tmp_path):
    with pytest.raises(MeshctlError, match=f"no local mesh: {tmp_path / 'mesh.json'} does not exist"):
        state.load(tmp_path)
    (tmp_path / "mesh.json").write_text("{")
    with pytest.raises(MeshctlError, match="mesh.json: not JSON"):
        state.load(tmp_path)
    state.remove(tmp_path)
    state.remove(tmp_path)  # idempotent
    assert not (tmp_path / "mesh.json").exists()

"""Which mesh a viz command reads when the line does not say: ``meshctl.cli.viz.reads_cluster``.

A Linkerd user's laptop has a ``~/.kube/config``; after ``meshctl demo up`` the viz
commands must still show the demo (docs/walkthrough.md: "they find the local mesh
themselves"), while anything named on the line or in the environment wins.
"""

from __future__ import annotations

import pytest

from meshctl.cli._common import GlobalOptions
from meshctl.cli.viz import reads_cluster


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("MESHCTL_DEMO_DIR", "KUBECONFIG", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _kubeconfig(home):
    (home / ".kube").mkdir()
    (home / ".kube" / "config").write_text("apiVersion: v1\nkind: Config\n")


def _demo_up(home):
    d = home / ".local" / "state" / "meshctl" / "demo"
    d.mkdir(parents=True)
    (d / "mesh.json").write_text("{}")


def test_nothing_configured_reads_the_local_mesh(home):
    assert not reads_cluster(GlobalOptions(), None)


def test_a_kubeconfig_alone_reads_the_cluster(home):
    _kubeconfig(home)
    assert reads_cluster(GlobalOptions(), None)


def test_a_running_demo_wins_over_a_kubeconfig_that_is_only_there(home):
    _kubeconfig(home)
    _demo_up(home)
    assert not reads_cluster(GlobalOptions(), None)


@pytest.mark.parametrize("named", [GlobalOptions(kubeconfig="/k"), GlobalOptions(context="prod"), "env"])
def test_a_named_cluster_wins_over_a_running_demo(home, monkeypatch, named):
    _demo_up(home)
    if named == "env":
        monkeypatch.setenv("KUBECONFIG", "/k")
        named = GlobalOptions()
    assert reads_cluster(named, None)


def test_a_named_local_mesh_wins_over_a_kubeconfig(home, monkeypatch):
    _kubeconfig(home)
    assert not reads_cluster(GlobalOptions(), "/some/demo")
    monkeypatch.setenv("MESHCTL_DEMO_DIR", str(home / "demo"))
    assert not reads_cluster(GlobalOptions(), None)

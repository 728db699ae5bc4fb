"""meshctl.inject: the pod-level decision, its patch renderers, and the properties
``uninject(inject(x)) == x`` and ``inject(inject(x)) == inject(x)``."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshctl.inject import (
    PROXY_FLAGS,
    InjectError,
    InjectOptions,
    OptionsError,
    Workload,
    inject_pod,
    inject_text,
    proxy_env,
    uninject_pod,
    uninject_text,
)
from meshctl import yamlstream
from meshctl.meshconfig import MeshConfig
from meshctl_proxy import config as proxy_config
PEM = "-----BEGIN CERTIFICATE-----\nMIIBroot\n-----END CERTIFICATE-----\n"
MANUAL = InjectOptions(manual=True, mesh=MeshConfig(trust_anchors_pem=PEM))


def pod(**spec) -> dict:
    return {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}]}], **spec}}


def json_patch_apply(doc: dict, ops: list[dict]) -> dict:
    """A minimal RFC 6902 applier (add/remove), independent of PodPatch.apply."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        if op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), op["value"])
        else:
            parent[last] = op["value"]
    return doc


# --- decisions ---------------------------------------------------------------------------


def test_annotation_mode_adds_the_annotation_and_non_default_config():
    options = InjectOptions.from_flags({"proxy-cpu-request": "100m", "proxy-log-level": "info"})
    result = inject_pod(pod(), options)
    assert result.verdict == "injected"
    new = result.patch.apply(pod())
    assert new["metadata"]["annotations"] == {"meshctl.io/inject": "enabled",
                                              "config.meshctl.io/proxy-cpu-request": "100m"}
    assert options.overrides == {"proxy-cpu-request": "100m"}  # info is the default: no annotation


def test_refusals_and_skips():
    assert inject_pod(pod(hostNetwork=True), InjectOptions()).verdict == "refused"
    istio = pod()
    istio["spec"]["containers"].append({"name": "istio-proxy", "image": "istio/proxyv2"})
    result = inject_pod(istio, InjectOptions())
    assert (result.verdict, "Istio" in result.reason) == ("refused", True)
    disabled = pod()
    disabled["metadata"]["annotations"] = {"meshctl.io/inject": "disabled"}
    assert inject_pod(disabled, InjectOptions()).verdict == "skipped"
    assert uninject_pod(disabled).verdict == "skipped"  # the user's opt-out stays


def test_udp_ports_warn():
    udp = pod()
    udp["spec"]["containers"][0]["ports"].append({"containerPort": 53, "protocol": "UDP"})
    result = inject_pod(udp, MANUAL)
    assert result.verdict == "injected"
    assert result.warnings and "53/UDP" in result.warnings[0]
    env = {e["name"]: e.get("value") for e in result.patch.apply(udp)["spec"]["initContainers"][1]["env"]}
    assert env["MESHCTL_PROXY_INBOUND_PORTS"] == "8080"  # UDP ports are not proxied


def test_manual_sidecar_is_rendered_from_the_proxy_definition():
    new = inject_pod(pod(), MANUAL, Workload("deployment", "web", "shop")).patch.apply(pod())
    init, proxy = new["spec"]["initContainers"]
    assert init["name"] == "meshctl-init" and proxy["name"] == "meshctl-proxy"
    assert init["args"] == proxy_config.InitConfig().to_args()
    assert init["securityContext"]["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    assert proxy["restartPolicy"] == "Always" and proxy["startupProbe"]["httpGet"]["path"] == "/ready"
    assert proxy["securityContext"]["runAsUser"] == proxy_config.PROXY_UID
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    env = proxy["env"]
    # Every variable is one the proxy knows, and every literal value parses with its parser.
    known = {s.env: s for s in proxy_config.SETTINGS}
    for var in env:
        assert var["name"] in known
        if "value" in var:
            known[var["name"]].parse(var["value"])
    loaded = proxy_config.load({v["name"]: v["value"] for v in env if "value" in v})
    assert loaded.inbound_listen_addr == ("0.0.0.0", proxy_config.INBOUND_PORT)
    assert loaded.identity_trust_anchors == PEM
    assert {v["name"] for v in env if "valueFrom" in v} == {
        "MESHCTL_PROXY_POD_NAME", "MESHCTL_PROXY_POD_NAMESPACE", "MESHCTL_PROXY_POD_SERVICE_ACCOUNT"}
    labels = new["metadata"]["labels"]
    assert labels == {"app": "web", "meshctl.io/control-plane-ns": "meshctl",
                      "meshctl.io/proxy-deployment": "web", "meshctl.io/workload-ns": "shop"}
    token = new["spec"]["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "identity.meshctl.io"


def test_manual_without_native_sidecar_puts_the_proxy_first_in_containers():
    options = InjectOptions.from_flags({"native-sidecar": "false"}, manual=True, mesh=MANUAL.mesh)
    new = inject_pod(pod(), options).patch.apply(pod())
    assert [c["name"] for c in new["spec"]["initContainers"]] == ["meshctl-init"]
    assert [c["name"] for c in new["spec"]["containers"]] == ["meshctl-proxy", "web"]
    assert "restartPolicy" not in new["spec"]["containers"][0]


def test_manual_needs_trust_anchors():
    with pytest.raises(InjectError, match="trust anchors"):
        inject_pod(pod(), InjectOptions(manual=True))


def test_flags_are_validated_with_the_flag_name():
    with pytest.raises(OptionsError, match="--proxy-memory-limit: expected a Kubernetes quantity"):
        InjectOptions.from_flags({"proxy-memory-limit": "lots"})
    with pytest.raises(OptionsError, match="--skip-inbound-ports: "):
        InjectOptions.from_flags({"skip-inbound-ports": "80,x"})
    with pytest.raises(OptionsError, match="--default-inbound-policy: "):
        InjectOptions.from_flags({"default-inbound-policy": "allow-all"})


def test_flag_defaults_come_from_the_proxy_definition():
    by_name = {f.name: f for f in PROXY_FLAGS}
    assert by_name["proxy-log-level"].default == proxy_config.SETTINGS_BY_FIELD["log_level"].default
    assert by_name["proxy-uid"].default == str(proxy_config.PROXY_UID)
    assert by_name["proxy-admin-port"].default == str(proxy_config.ADMIN_PORT)


def test_env_follows_the_mesh_config():
    mesh = MeshConfig(mesh_namespace="mesh", cluster_domain="corp.example", trust_anchors_pem=PEM)
    env = {e["name"]: e.get("value") for e in proxy_env(pod(), InjectOptions(manual=True, mesh=mesh), Workload())}
    assert env["MESHCTL_PROXY_DESTINATION_SVC_ADDR"] == "meshctl-dst.mesh.svc.corp.example.:8086"
    assert env["MESHCTL_PROXY_DESTINATION_PROFILE_SUFFIXES"] == "svc.corp.example."


# --- the webhook's seam: JSON patch ------------------------------------------------------


@pytest.mark.parametrize("options", [InjectOptions(), MANUAL], ids=["annotation", "manual"])
def test_json_patch_does_what_apply_does(options):
    template = pod()
    patch = inject_pod(template, options).patch
    assert json_patch_apply(template, patch.json_patch(template)) == patch.apply(template)
    again = patch.apply(template)
    repatch = inject_pod(again, options).patch
    assert json_patch_apply(again, repatch.json_patch(again)) == repatch.apply(again) == again
    ops = patch.json_patch({"spec": {"template": template}}["spec"]["template"], prefix="/spec/template")
    assert all(op["path"].startswith("/spec/template/") for op in ops)
    assert any("meshctl.io~1" in op["path"] or "meshctl.io/" in json.dumps(op.get("value")) for op in ops)


# --- properties --------------------------------------------------------------------------

RESERVED = {"meshctl-init", "meshctl-proxy", "meshctl-identity-end-entity", "meshctl-identity-token",
            "istio-proxy", "istio-init", "linkerd-proxy", "linkerd-init"}
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8).filter(
    lambda n: n not in RESERVED)
strings = st.one_of(st.sampled_from(["on", "NO", "y", "0644", "", "a: b", "multi\nline\n", "é", "true", "12:30"]),
                    st.text(max_size=8))
maps = st.dictionaries(st.one_of(names, st.sampled_from(["example.com/key", "on", "0644"])), strings, max_size=3)
ports = st.lists(st.fixed_dictionaries({"containerPort": st.integers(1, 65535)},
                                       optional={"protocol": st.sampled_from(["TCP", "UDP"]), "name": names}),
                 max_size=2)
containers = st.lists(st.fixed_dictionaries({"name": names, "image": names},
                                            optional={"ports": ports, "args": st.lists(strings, max_size=2)}),
                      min_size=1, max_size=2)
templates = st.fixed_dictionaries(
    {"spec": st.fixed_dictionaries({"containers": containers},
                                   optional={"initContainers": containers,
                                             "volumes": st.lists(st.fixed_dictionaries({"name": names, "emptyDir": st.just({})}), max_size=2),
                                             "hostNetwork": st.just(False)})},
    optional={"metadata": st.fixed_dictionaries({}, optional={"annotations": st.one_of(st.none(), maps),
                                                              "labels": st.one_of(st.none(), maps),
                                                              "creationTimestamp": st.none()})},
)
options_st = st.sampled_from([InjectOptions(), InjectOptions.from_flags({"proxy-cpu-request": "10m", "opaque-ports": "25"}),
                              MANUAL, InjectOptions.from_flags({"native-sidecar": "false"}, manual=True, mesh=MANUAL.mesh)])

OMITTABLE = {"annotations", "labels", "initContainers", "volumes", "metadata"}


def omitempty(value):
    """Kubernetes leaves out empty maps and lists (omitempty): the equality uninject promises."""
    if isinstance(value, dict):
        out = {k: omitempty(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if not (k in OMITTABLE and v in (None, {}, []))}
    if isinstance(value, list):
        return [omitempty(v) for v in value]
    return value


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(template=templates, options=options_st)
def test_uninject_inverts_inject_and_inject_is_idempotent_on_dicts(template, options):
    injected = inject_pod(template, options, Workload("deployment", "web", "shop")).patch.apply(template)
    again = inject_pod(injected, options, Workload("deployment", "web", "shop")).patch.apply(injected)
    assert again == injected
    # uninject gives the template back, except the config.meshctl.io/* annotations inject wrote
    # for the flags given: configuration, which uninject keeps (as linkerd's keeps config.linkerd.io/*).
    expected = template
    written = {} if options.manual else options.annotations_to_write(
        ((template.get("metadata") or {}).get("annotations")) or {})
    if written:
        meta = dict(template.get("metadata") or {})
        meta["annotations"] = {**(meta.get("annotations") or {}), **written}
        expected = {**template, "metadata": meta}
    assert omitempty(uninject_pod(injected).patch.apply(injected)) == omitempty(expected)
    if options.manual:
        # What --manual adds is valid Kubernetes 1.31 whatever the (valid) pod around it.
        names = [c["name"] for f in ("initContainers", "containers") for c in injected["spec"].get(f) or []]
        if len(names) == len(set(names)):
            import kubernetes_validate

            kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                          "spec": injected["spec"]}, "1.31.0", strict=True)


def _values(text: str) -> list:
    return [d.value() for d in yamlstream.documents(text, "x") if d.node is not None]


def _dump(obj: dict, style: str) -> str:
    if style == "json":
        return json.dumps(obj, indent=4, ensure_ascii=False) + "\n"
    if style == "flow":
        return yaml.safe_dump(obj, default_flow_style=True, sort_keys=False, allow_unicode=True)
    if style == "indented":
        class Indented(yaml.SafeDumper):
            def increase_indent(self, flow=False, indentless=False):
                return super().increase_indent(flow, False)
        return yaml.dump(obj, Dumper=Indented, sort_keys=False, indent=4, allow_unicode=True)
    return "# a comment that must survive\n" + yaml.safe_dump(obj, sort_keys=False, allow_unicode=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(template=templates, options=options_st, style=st.sampled_from(["block", "flow", "json", "indented"]),
       kind=st.sampled_from(["Deployment", "CronJob", "Pod"]))
def test_text_edits_agree_with_the_patch_and_round_trip(template, options, style, kind):
    if kind == "Pod":
        obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, **{k: v for k, v in template.items() if k != "metadata"}}
        if "metadata" in template:
            obj["metadata"] = {"name": "p", **(template["metadata"] or {})}
    elif kind == "CronJob":
        obj = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
               "spec": {"jobTemplate": {"spec": {"template": template}}}}
    else:
        obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": template}}
    text = _dump(obj, style)
    # verify=True: each edited document must read back as the patch applied to its values.
    once = inject_text(text, "x", options, verify=True)
    assert once.outcomes[0].verdict == "injected"
    twice = inject_text(once.text, "x", options, verify=True)
    assert twice.text == once.text
    back = uninject_text(once.text, "x", verify=True)
    # Back to the input, but for the config.meshctl.io/* annotations written for the flags (kept, as linkerd does).
    assert omitempty(_values(back.text)) == omitempty(_values(_dump(_with_written_config(obj, options, kind), style)))
    if "# a comment" in text:
        assert back.text.startswith("# a comment that must survive\n")


def _with_written_config(obj: dict, options: InjectOptions, kind: str) -> dict:
    """*obj* with the config annotations annotation-mode inject writes on its pod template."""
    import copy

    obj = copy.deepcopy(obj)
    template = obj if kind == "Pod" else (obj["spec"]["jobTemplate"]["spec"]["template"] if kind == "CronJob"
                                          else obj["spec"]["template"])
    current = ((template.get("metadata") or {}).get("annotations")) or {}
    written = {} if options.manual else options.annotations_to_write(current)
    if written:
        template["metadata"] = {**(template.get("metadata") or {}), "annotations": {**current, **written}}
    return obj


def test_webhook_seam_reads_config_annotations_and_keeps_them():
    annotated = pod()
    annotated["metadata"]["annotations"] = {"meshctl.io/inject": "enabled",
                                            "config.meshctl.io/proxy-cpu-request": "100m",
                                            "config.meshctl.io/some-future-flag": "x"}
    options = InjectOptions.from_annotations(annotated["metadata"]["annotations"], mesh=MANUAL.mesh)
    assert (options.manual, options.overrides) == (True, {"proxy-cpu-request": "100m"})
    result = inject_pod(annotated, options, Workload("deployment", "web", "shop"), keep_opt_in=True)
    new = json_patch_apply(annotated, result.patch.json_patch(annotated))
    assert new == result.patch.apply(annotated)
    assert new["metadata"]["annotations"]["meshctl.io/inject"] == "enabled"
    assert new["metadata"]["annotations"]["config.meshctl.io/proxy-cpu-request"] == "100m"
    proxy = new["spec"]["initContainers"][1]
    assert proxy["resources"] == {"requests": {"cpu": "100m"}}
    # A second admission (e.g. a re-created pod spec) changes nothing.
    again = inject_pod(new, options, Workload("deployment", "web", "shop"), keep_opt_in=True)
    assert again.patch.apply(new) == new
    with pytest.raises(OptionsError, match="^config.meshctl.io/proxy-cpu-request: expected a Kubernetes quantity"):
        InjectOptions.from_annotations({"config.meshctl.io/proxy-cpu-request": "lots"})

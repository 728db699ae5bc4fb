"""Meshing workloads: what ``meshctl inject`` adds and ``uninject`` removes.

Pure functions over plain data (no I/O, no typer or rich), shared by the CLI
and the admission webhook.

Per pod (the webhook's seam)::

    result = inject_pod(pod_or_template, options, Workload("deployment", "web", "shop"))
    result.verdict          # "injected" | "skipped" | "refused"
    result.reason, result.warnings
    result.patch.apply(pod)                       # the new pod dict
    result.patch.json_patch(pod, prefix="")       # RFC 6902 ops for an AdmissionReview

    uninject_pod(pod).patch                       # removes exactly what inject adds

The webhook reads its options from the pod's (and namespace's) annotations and
keeps them on the pod::

    options = InjectOptions.from_annotations({**namespace_annotations, **pod_annotations}, mesh=mesh)
    result = inject_pod(pod, options, workload, keep_opt_in=True)

Per object: :func:`inject_object` / :func:`uninject_object` find the pod
template of a Deployment, StatefulSet, DaemonSet, ReplicaSet,
ReplicationController, Job, CronJob or Pod, annotate a Namespace (and a
Service when ``--opaque-ports`` concerns it), and skip every other kind.  The
:class:`Outcome` says which, and where its patch applies (``outcome.target``).

Per stream: :func:`inject_text` / :func:`uninject_text` take YAML or JSON text
(multi-document, ``kind: List``) and return the edited text and the outcomes;
edits are surgical (see :mod:`meshctl.yamlstream`), so untouched text stays
byte for byte.

Options: :class:`InjectOptions` (``manual``, ``overrides`` by flag name, the
installed :class:`~meshctl.meshconfig.MeshConfig`).  :data:`PROXY_FLAGS` defines
each proxy flag once: its CLI name, its ``config.meshctl.io/<name>`` annotation
and its default (taken from :mod:`meshctl_proxy.config`).

Modes:

- annotation (default): the pod template gets ``meshctl.io/inject: enabled``
  and a ``config.meshctl.io/<flag>`` annotation per non-default flag; the
  webhook does the rest in the cluster.
- manual: the full sidecar (init container ``meshctl-init``, proxy
  ``meshctl-proxy`` as a native sidecar or first container, identity volumes,
  labels, ``meshctl.io/proxy-version`` and ``meshctl.io/trust-root-sha256``).
  The proxy environment is rendered from ``meshctl_proxy.config.SETTINGS``:
  see :func:`proxy_env` for what is written and what is left to defaults.

``uninject(inject(x)) == x`` up to empty annotation/label maps and empty
initContainers/volumes lists, which Kubernetes treats as absent (omitempty).
"""

import importlib

# Lazy (PEP 562): `meshctl --help` registers the inject flags from _options
# without importing PyYAML and the rest of the core.
_EXPORTS = {
    "_objects": ("TEMPLATE_PATHS", "Outcome", "inject_object", "is_list", "uninject_object"),
    "_options": ("CONFIG_PREFIX", "INJECT_ANNOTATION", "PROXY_FLAGS", "PROXY_FLAGS_BY_NAME", "InjectOptions",
                 "OptionsError", "ProxyFlag"),
    "_patch": ("InsertItems", "PodPatch", "Remove", "SetEntries", "pointer"),
    "_pod": ("InjectError", "PodResult", "Workload", "inject_pod", "proxy_env", "uninject_pod"),
    "_stream": ("StreamResult", "apply_outcome", "inject_text", "uninject_text"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_WHERE))


__all__ = [
    "CONFIG_PREFIX", "INJECT_ANNOTATION", "PROXY_FLAGS", "PROXY_FLAGS_BY_NAME", "TEMPLATE_PATHS",
    "InjectError", "InjectOptions", "InsertItems", "OptionsError", "Outcome", "PodPatch", "PodResult", "ProxyFlag",
    "Remove", "SetEntries", "StreamResult", "Workload",
    "apply_outcome", "inject_object", "inject_pod", "inject_text", "is_list", "pointer", "proxy_env",
    "uninject_object", "uninject_pod", "uninject_text",
]

"""``meshctl inject`` and ``meshctl uninject``: mesh the workloads of a manifest stream.

Thin: read the inputs, build options, call :mod:`meshctl.inject`, write the
data to stdout and then the report to stderr (as ``linkerd inject`` does).
The whole output is buffered: nothing reaches stdout unless every input was
read and nothing was refused.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Optional

import typer

from meshctl.cli import _common

# Local imports only below this line's functions: meshctl.inject pulls in PyYAML (fast),
# never kubernetes; the cluster is read only for --manual without --ignore-cluster.

INPUT_SUFFIXES = (".yaml", ".yml", ".json")
URL_TIMEOUT_SECONDS = 30.0


def _read_url(url: str, limit: int) -> bytes:
    import urllib.error
    import urllib.request

    from meshctl.errors import InputError

    class HttpsOnly(urllib.request.HTTPRedirectHandler):
        # A redirect must not downgrade to plain http: the refusal would be moot.
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            if not newurl.lower().startswith("https://"):
                raise InputError(f"{url}: redirected to {newurl}: plain http is refused")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    opener = urllib.request.build_opener(HttpsOnly)
    try:
        with opener.open(url, timeout=URL_TIMEOUT_SECONDS) as resp:
            data = resp.read(limit + 1)
    except urllib.error.HTTPError as exc:
        raise InputError(f"{url}: cannot fetch: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(f"{url}: cannot fetch: {reason}") from None
    return data


def _read_file(path: str, limit: int) -> bytes:
    from meshctl.errors import InputError

    try:
        with open(path, "rb") as fh:
            return fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None


def read_inputs(inputs: list[str]) -> list[tuple[str, bytes]]:
    """(source name, bytes) for each input: ``-``, files, directories (recursive, lexical), https URLs."""
    from meshctl.errors import InputError, UsageError
    from meshctl.yamlstream import MAX_INPUT_BYTES

    out: list[tuple[str, bytes]] = []
    for item in inputs:
        if item == "-":
            out.append(("<stdin>", sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)))
        elif item.lower().startswith("https://"):
            out.append((item, _read_url(item, MAX_INPUT_BYTES)))
        elif item.lower().startswith("http://"):
            raise UsageError(f"{item}: plain http is refused (manifests must not be open to tampering): use https")
        elif os.path.isdir(item):
            found = []
            for root, dirs, files in os.walk(item):
                dirs.sort()
                found += [os.path.join(root, f) for f in files if f.lower().endswith(INPUT_SUFFIXES)]
            out += [(path, _read_file(path, MAX_INPUT_BYTES)) for path in sorted(found)]
        elif os.path.exists(item):
            out.append((item, _read_file(item, MAX_INPUT_BYTES)))
        else:
            raise InputError(f"{item}: no such file or directory")
    return out


def _join(pieces: list[str], output: str | None) -> str:
    """Concatenate the outputs of several sources, keeping YAML documents apart."""
    out: list[str] = []
    for piece in pieces:
        if not piece:
            continue
        if out and output != "json":
            if not out[-1].endswith("\n"):
                out.append("\n")
            if not piece.lstrip("\ufeff").startswith(("---", "%")):
                out.append("---\n")
        out.append(piece)
    return "".join(out)


def _report(outcomes, *, verbose: bool, uninject: bool) -> list[str]:
    checks: list[str] = []
    summary: list[str] = []
    for o in outcomes:
        if verbose:
            checks += [f"√ {o.label}: {c}" for c in o.checks]
        checks += [f"‼ {o.label}: {w}" for w in o.warnings]
        if o.verdict == "refused":
            summary.append(f"{o.label} refused: {o.reason}")
            continue
        if not o.kind:
            # linkerd's words, with where the document is: `document missing "kind" field, skipped`.
            summary.append(f"{o.label}: {o.reason}")
            continue
        if o.verdict == "skipped" and o.reason and (verbose or not uninject):
            checks.append(f"‼ {o.label}: {o.reason}")
        summary.append(f"{o.label} {o.verdict}")
    return checks + summary


def _nothing_supported(sources: list[str], outcomes) -> list[str]:
    """A warning when the whole input held nothing inject acts on (e.g. a swagger file given by mistake)."""
    from meshctl.inject._objects import SUPPORTED_KINDS

    if any(o.kind in SUPPORTED_KINDS for o in outcomes):
        return []
    given = ", ".join(sources) if len(sources) <= 3 else f"{len(sources)} inputs"
    return [f"‼ {given or 'the input'}: no workload, Namespace or Service found: nothing to inject "
            "(Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob, Pod)"]


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _mesh_config(ctx: typer.Context, *, manual: bool, ignore_cluster: bool, trust_anchors_file: Optional[str]):
    from meshctl.errors import InputError, UsageError
    from meshctl.meshconfig import MeshConfig

    opts = _common.global_options(ctx)
    anchors = None
    if trust_anchors_file:
        try:
            with open(trust_anchors_file, encoding="utf-8") as fh:
                anchors = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{trust_anchors_file}: {getattr(exc, 'strerror', None) or exc}") from None
        if "-----BEGIN CERTIFICATE-----" not in anchors:
            raise InputError(f"{trust_anchors_file}: no PEM certificate (-----BEGIN CERTIFICATE-----) found")
    if not manual:
        return MeshConfig(mesh_namespace=opts.mesh_namespace)  # annotation mode never needs a cluster
    if ignore_cluster:
        if anchors is None:
            raise UsageError("--manual --ignore-cluster needs the mesh's trust anchors: "
                               "pass --identity-trust-anchors-file FILE (PEM)")
        return MeshConfig(mesh_namespace=opts.mesh_namespace, trust_anchors_pem=anchors)
    from meshctl import k8s
    from meshctl.errors import ClusterError

    try:
        mesh = k8s.read_mesh_config(opts)
    except ClusterError as exc:
        message = str(exc)
        if "--ignore-cluster" not in message:
            message += " (use --ignore-cluster --identity-trust-anchors-file FILE to inject without a cluster)"
        raise ClusterError(message) from None
    if anchors is not None:
        import dataclasses

        mesh = dataclasses.replace(mesh, trust_anchors_pem=anchors)
    return mesh


def _proxy_flag_params() -> list[inspect.Parameter]:
    # One CLI flag per meshctl.inject.PROXY_FLAGS entry: the definition lives there, once.
    from meshctl.inject._options import PROXY_FLAGS

    params = []
    for flag in PROXY_FLAGS:
        default = f" [default: {flag.default}]" if flag.default else ""
        if flag.name == "native-sidecar":
            # A switch, as linkerd's boolean flags: `--native-sidecar`, `--native-sidecar=false`
            # (meshctl.cli rewrites `--FLAG=true|false` of switches) or `--no-native-sidecar`.
            params.append(inspect.Parameter(
                flag.name.replace("-", "_"), inspect.Parameter.KEYWORD_ONLY, annotation=Optional[bool],
                default=typer.Option(None, f"--{flag.name}/--no-{flag.name}", help=flag.help + default,
                                     show_default=False),
            ))
            continue
        params.append(inspect.Parameter(
            flag.name.replace("-", "_"), inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
            default=typer.Option(None, f"--{flag.name}", help=flag.help + default),
        ))
    return params


def _with_proxy_flags(func):
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    func.__signature__ = sig.replace(parameters=params + _proxy_flag_params())
    return func


OutputOption = typer.Option(None, "--output", "-o", help="Output format (default: as the input was written).")




def register(app: typer.Typer) -> None:
    @app.command("inject")
    @_with_proxy_flags
    def inject(
        ctx: typer.Context,
        inputs: list[str] = typer.Argument(..., metavar="- | FILE | DIR | https://URL",
                                           help="Manifests: '-' for stdin, files, directories (recursive), https URLs."),
        manual: bool = typer.Option(False, "--manual", help="Write the full sidecar instead of the inject annotation."),
        ignore_cluster: bool = typer.Option(False, "--ignore-cluster",
                                            help="Do not read the installed mesh's configuration (--manual only)."),
        trust_anchors_file: Optional[str] = typer.Option(None, "--identity-trust-anchors-file",
                                                         help="PEM trust anchors of the mesh (needed with --manual --ignore-cluster)."),
        output: Optional[_common.OutputFormat] = OutputOption,
        **proxy_flags: Optional[str],
    ) -> None:
        """Add the meshctl proxy to the workloads of Kubernetes manifests.

        Annotates pod templates with meshctl.io/inject: enabled (the admission
        webhook does the rest), or writes the whole sidecar with --manual.

        Example: kubectl get -n shop deploy -o yaml | meshctl inject - | kubectl apply -f -
        """
        from meshctl.errors import UsageError
        from meshctl.inject import InjectError, InjectOptions, OptionsError, inject_text
        from meshctl.yamlstream import read_text

        flags = {name.replace("_", "-"): (str(value).lower() if isinstance(value, bool) else value)
                 for name, value in proxy_flags.items()}
        mesh = _mesh_config(ctx, manual=manual, ignore_cluster=ignore_cluster, trust_anchors_file=trust_anchors_file)
        try:
            options = InjectOptions.from_flags(flags, manual=manual, mesh=mesh)
        except (OptionsError, InjectError) as exc:
            raise UsageError(str(exc)) from None
        fmt = output.value if output else None
        inputs_read = read_inputs(inputs)
        results = [inject_text(read_text(data, source), source, options, output=fmt) for source, data in inputs_read]
        notes = _nothing_supported([source for source, _ in inputs_read], [o for r in results for o in r.outcomes])
        _finish(ctx, results, fmt, uninject=False, notes=notes)

    @app.command("uninject")
    def uninject(
        ctx: typer.Context,
        inputs: list[str] = typer.Argument(..., metavar="- | FILE | DIR | https://URL",
                                           help="Manifests: '-' for stdin, files, directories (recursive), https URLs."),
        output: Optional[_common.OutputFormat] = OutputOption,
    ) -> None:
        """Remove what meshctl inject added (either mode) from Kubernetes manifests."""
        from meshctl.inject import uninject_text
        from meshctl.yamlstream import read_text

        fmt = output.value if output else None
        results = [uninject_text(read_text(data, source), source, output=fmt) for source, data in read_inputs(inputs)]
        _finish(ctx, results, fmt, uninject=True)


def _finish(ctx: typer.Context, results, fmt: str | None, *, uninject: bool, notes: list[str] = ()) -> None:
    from meshctl.errors import MeshctlError

    verbose = _common.global_options(ctx).verbose  # --verbose anywhere on the line (a global flag)
    outcomes = [o for r in results for o in r.outcomes]
    lines = _report(outcomes, verbose=verbose, uninject=uninject) + list(notes)
    refused = [o for o in outcomes if o.verdict == "refused"]
    if not refused:
        _write(_join([r.text for r in results], fmt))
    for line in lines:
        _common.report(line)
    if refused:
        raise MeshctlError(f"{len(refused)} resource{'s' if len(refused) != 1 else ''} refused: nothing written")

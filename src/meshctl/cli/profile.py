"""``meshctl profile``: ServiceProfiles from OpenAPI, protobuf or a template; ``--validate`` checks them.

Thin: flags in, the ``meshctl.profiles`` core, text out.  The profile is
written to stdout only once it is complete, so a failure leaves stdout empty.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from meshctl.cli import _common


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile(
        ctx: typer.Context,
        args: Optional[List[str]] = typer.Argument(None, metavar="SERVICE | FILE...",
                                                   help="The Service to profile, or with --validate the files to check."),
        open_api: Optional[str] = typer.Option(None, "--open-api", metavar="FILE",
                                               help="Swagger 2.0 / OpenAPI 3.x spec (YAML or JSON; '-' for stdin)."),
        proto: Optional[str] = typer.Option(None, "--proto", metavar="FILE",
                                            help="Protobuf file with gRPC services ('-' for stdin)."),
        template: bool = typer.Option(False, "--template", help="Print a commented skeleton explaining every field."),
        validate: bool = typer.Option(False, "--validate",
                                      help="Check ServiceProfile files (YAML/JSON, several documents each); "
                                           "report every problem."),
        namespace: Optional[str] = typer.Option(None, "--namespace", "-n", metavar="NAMESPACE",
                                                help="Namespace of the Service (default: the kubeconfig context's, "
                                                     "else 'default')."),
        output: _common.OutputFormat = typer.Option(_common.OutputFormat.yaml, "--output", "-o", help="yaml or json."),
        ignore_cluster: bool = typer.Option(False, "--ignore-cluster",
                                            help="Do not read the installed mesh's configuration; "
                                                 "cluster domain 'cluster.local' unless --cluster-domain."),
        cluster_domain: Optional[str] = typer.Option(None, "--cluster-domain", metavar="DOMAIN",
                                                     help="Cluster domain for the profile's name (no cluster needed)."),
        ignore_spec_errors: bool = typer.Option(False, "--ignore-spec-errors",
                                                help="With --open-api: generate from an invalid spec anyway, "
                                                     "with a warning per problem (what cannot be read is left out)."),
    ) -> None:
        """Output a ServiceProfile for a Service, from an OpenAPI spec, a .proto file or a template.

        Examples:

          meshctl profile --open-api price-api.json price-api-svc -n shop | kubectl apply -f -

          meshctl profile --template web -n shop --ignore-cluster > web-profile.yaml

          meshctl profile --validate web-profile.yaml
        """
        from meshctl.errors import UsageError

        args = args or []
        sources = [flag for flag, given in (("--open-api", open_api is not None), ("--proto", proto is not None),
                                            ("--template", template), ("--validate", validate)) if given]
        if len(sources) != 1:
            raise UsageError("give exactly one of --open-api FILE, --proto FILE, --template or --validate FILE..."
                             + (f" (got {', '.join(sources)})" if sources else ""))
        if validate:
            if not args:
                raise UsageError("--validate needs at least one FILE")
            if namespace or cluster_domain or ignore_cluster:
                raise UsageError("--validate takes only files")
            raise typer.Exit(_validate_files(args))
        if len(args) != 1:
            raise UsageError(f"expected one SERVICE, got {len(args)} arguments")
        if namespace is None:
            # As linkerd (and kubectl): the kubeconfig context's namespace, else "default".
            from meshctl import k8s

            namespace = k8s.kubeconfig_namespace(_common.global_options(ctx)) or "default"
        if ignore_spec_errors and open_api is None:
            raise UsageError("--ignore-spec-errors only applies with --open-api")
        _generate(ctx, service=args[0], namespace=namespace, open_api=open_api, proto=proto,
                  output=output.value, ignore_cluster=ignore_cluster, cluster_domain=cluster_domain,
                  ignore_spec_errors=ignore_spec_errors)


def _generate(ctx: typer.Context, *, service: str, namespace: str, open_api: str | None, proto: str | None,
              output: str, ignore_cluster: bool, cluster_domain: str | None, ignore_spec_errors: bool = False) -> None:
    from meshctl import profiles
    from meshctl.profiles import text

    # Cheap checks first: a typo in a name fails before reading a large spec
    # or waiting for a cluster.
    profiles.check_service(service)
    profiles.check_namespace(namespace)
    if cluster_domain is not None:
        profiles.check_cluster_domain(cluster_domain)
    # The whole profile is made before the cluster is asked for its domain:
    # bad input fails fast and offline.  Its name is filled in last.
    made = None
    if open_api is not None:
        from meshctl.profiles import openapi

        source = _source(open_api)
        problems: list[str] = []  # every problem at once; fatal unless --ignore-spec-errors
        spec = openapi.load_spec(_read(open_api), source=source, problems=problems)
        made = openapi.from_openapi(spec, name="pending", namespace=namespace, source=source, problems=problems)
        if problems and not ignore_spec_errors:
            hint = " (--ignore-spec-errors generates the profile anyway)"
            raise openapi.SpecError(source, [*problems[:-1], problems[-1] + hint])
        for problem in problems:
            _common.report(f"‼ {problem} (ignored: --ignore-spec-errors)")
    elif proto is not None:
        from meshctl.profiles import proto as proto_core

        source = _source(proto)
        made = proto_core.from_proto(text.decode_text(_read(proto), source=source), name="pending",
                                     namespace=namespace, source=source)
    domain = _cluster_domain(ctx, ignore_cluster=ignore_cluster, cluster_domain=cluster_domain)
    if made is None:
        from meshctl.profiles.template import render_template

        result = render_template(service=service, namespace=namespace, cluster_domain=domain)
        if output == "json":
            import yaml

            result = text.dump(yaml.safe_load(result), "json")
    else:
        import dataclasses

        name = profiles.profile_name(service, namespace, domain)
        result = text.dump(dataclasses.replace(made, name=name).to_dict(), output)
    sys.stdout.write(result)
    sys.stdout.flush()


def _cluster_domain(ctx: typer.Context, *, ignore_cluster: bool, cluster_domain: str | None) -> str:
    """--cluster-domain, else cluster.local with --ignore-cluster, else the installed mesh's setting.

    Guessing cluster.local when the cluster cannot be asked would silently
    give a profile no proxy ever looks up on a cluster with another domain;
    so without a cluster we fail and say how to work offline.
    """
    from meshctl.meshconfig import DEFAULT_CLUSTER_DOMAIN

    if cluster_domain is not None:
        return cluster_domain.rstrip(".")
    if ignore_cluster:
        return DEFAULT_CLUSTER_DOMAIN
    from meshctl import k8s
    from meshctl.errors import ClusterError

    try:
        return k8s.read_mesh_config(_common.global_options(ctx)).cluster_domain
    except ClusterError as exc:
        message = str(exc)
        if "--ignore-cluster" not in message:
            message += " (use --ignore-cluster for cluster.local, or --cluster-domain DOMAIN, to work without a cluster)"
        raise ClusterError(f"cannot read the cluster domain: {message}") from None


def _validate_files(files: list[str]) -> int:
    """Report every problem of every ServiceProfile document; 0 when all are valid."""
    from meshctl.errors import MeshctlError
    from meshctl.profiles import text
    from meshctl_proxy.policy.service_profile import ProfileError, ServiceProfile

    failed = False
    for path in files:
        source = _source(path)
        try:
            documents = list(text.parse_documents(_read(path), source=source))
        except MeshctlError as exc:
            _common.report(f"Error: {exc}")
            failed = True
            continue
        if not documents:
            _common.report(f"Error: {source}: no documents")
            failed = True
        for number, doc in documents:
            where = f"{source}: document {number}"
            if isinstance(doc, dict) and doc.get("kind") not in (None, "ServiceProfile"):
                _common.report(f"Error: {where}: a {doc.get('kind')}, not a ServiceProfile")
                failed = True
                continue
            try:
                profile = ServiceProfile.from_dict(doc)
            except ProfileError as exc:
                failed = True
                for problem in exc.problems:
                    _common.report(f"Error: {where}: {problem}")
                continue
            count = len(profile.routes)
            _common.report(f"{where}: ServiceProfile {profile.name} is valid ({count} route{'' if count == 1 else 's'})")
    return 1 if failed else 0


def _source(path: str) -> str:
    return "<stdin>" if path == "-" else path


def _read(path: str) -> bytes:
    from meshctl.errors import InputError
    from meshctl.profiles.text import read_limited

    if path == "-":
        return read_limited(sys.stdin.buffer, source="<stdin>")
    try:
        with open(path, "rb") as f:
            return read_limited(f, source=path)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None

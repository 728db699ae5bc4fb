"""The ``meshctl`` command line: root, global flags, and one module per command.

Command modules import their cores lazily (inside the command function), so
``meshctl --help`` pulls in neither ``kubernetes`` nor ``openapi_spec_validator``.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from meshctl.cli import _common
from meshctl.errors import MeshctlError

app = typer.Typer(
    name="meshctl",
    help="meshctl manages a service mesh: install it, mesh workloads, and watch their golden metrics.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    ctx: typer.Context,
    kubeconfig: Optional[str] = typer.Option(None, "--kubeconfig", envvar="KUBECONFIG", help="Path to the kubeconfig file."),
    context: Optional[str] = typer.Option(None, "--context", help="Name of the kubeconfig context to use."),
    mesh_namespace: str = typer.Option(_common.DEFAULT_MESH_NAMESPACE, "--mesh-namespace", "-L", help="Namespace of the mesh's control plane."),
    verbose: bool = typer.Option(False, "--verbose", help="Report more, including what succeeded."),
) -> None:
    ctx.obj = _common.GlobalOptions(kubeconfig=kubeconfig, context=context, mesh_namespace=mesh_namespace, verbose=verbose)


def _register() -> None:
    # Importing a command module only defines its typer function; the module
    # keeps its own heavy imports inside the function body.
    from meshctl.cli import completion, version

    for module in (version, completion):
        module.register(app)
    for optional in ("inject", "profile", "proxy_init"):
        try:
            mod = __import__(f"meshctl.cli.{optional}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"meshctl.cli.{optional}":
                raise
            continue
        mod.register(app)


_register()


def main() -> None:
    try:
        app()
    except MeshctlError as exc:
        _common.err_console().print(f"Error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # `meshctl inject ... | head` closed stdout: not our failure to report.
        sys.stderr.close()
        sys.exit(1)

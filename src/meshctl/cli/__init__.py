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
    rich_markup_mode=None,
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
    # Every public module of this package is a command module exposing
    # register(app).  Importing one only defines its typer function; each
    # module keeps its heavy imports inside the function body.
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").register(app)


_register()


def main() -> None:
    import os

    if "_MESHCTL_COMPLETE" in os.environ:
        # add_completion=False keeps typer's --install-completion flags out of
        # our help, but also skips registering its shell classes: do it here,
        # only when a shell asks for completions.
        from typer._completion_classes import completion_init

        completion_init()
    try:
        app(prog_name="meshctl")
    except MeshctlError as exc:
        _common.err_console().print(f"Error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # `meshctl inject ... | head` closed stdout: not our failure to report.
        sys.stderr.close()
        sys.exit(1)

"""The ``meshctl`` command line: root, global flags, and one module per command.

Command modules import their cores lazily (inside the command function), so
``meshctl --help`` pulls in neither ``kubernetes`` nor ``openapi_spec_validator``.

Conventions every command inherits from here (docs/linkerd-differences.md):

- The global flags (``--kubeconfig``, ``--context``, ``-L/--mesh-namespace``,
  ``--verbose``) work anywhere on the line, as cobra's persistent flags do for
  linkerd: :func:`build_command` copies them into every sub-command's parser
  (including commands registered later), and :func:`_common.global_options`
  merges what was given after the command name over what was given before it.
- Exit codes: 2 for usage errors (click's, and :class:`meshctl.errors.UsageError`),
  1 for every other :class:`meshctl.errors.MeshctlError`; both are printed
  by :func:`main` as one ``Error: ...`` line, the problem first.
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
    kubeconfig: Optional[str] = typer.Option(None, "--kubeconfig", envvar="KUBECONFIG", metavar="PATH",
                                             help="Path to the kubeconfig file."),
    context: Optional[str] = typer.Option(None, "--context", metavar="NAME", help="Name of the kubeconfig context to use."),
    mesh_namespace: str = typer.Option(_common.DEFAULT_MESH_NAMESPACE, "--mesh-namespace", "-L", metavar="NAMESPACE",
                                       help="Namespace of the mesh's control plane."),
    verbose: bool = typer.Option(False, "--verbose", help="Report more, including what succeeded."),
) -> None:
    # The values are read from this context by _common.global_options(), merged with
    # those given after the command name; ctx.obj is kept for code that reads it.
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


def build_command():
    """The root click group with the global flags added to every sub-command.

    Built from :data:`app` on each call, so commands registered by any module
    get the flags without doing anything themselves.
    """
    import typer.main

    group = typer.main.get_command(app)
    _common.add_persistent_flags(group, group.params)
    return group


def iter_commands(group=None, path: tuple[str, ...] = ()):
    """(path, click command) for every command under ``group``, groups included, depth first."""
    group = group if group is not None else build_command()
    for name, command in sorted(getattr(group, "commands", {}).items()):
        yield (*path, name), command
        yield from iter_commands(command, (*path, name))


def main(args: list[str] | None = None) -> None:
    import os

    if "_MESHCTL_COMPLETE" in os.environ:
        # add_completion=False keeps typer's --install-completion flags out of
        # our help, but also skips registering its shell classes: do it here,
        # only when a shell asks for completions.
        from typer._completion_classes import completion_init

        completion_init()
    try:
        code = _run(args)
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # `meshctl inject ... | head` closed stdout: not our failure to report.
        sys.stderr.close()
        code = 1
    sys.exit(code)


def _run(args: list[str] | None) -> int:
    """Run the command line; every error is reported here, the problem first, as one ``Error:`` line."""
    from typer import _click
    from typer.exceptions import Abort

    command = build_command()
    args = _common.rewrite_bool_values(command, list(sys.argv[1:] if args is None else args))
    try:
        # standalone_mode=False: usage errors come back to us, so that every
        # error is printed by this one piece of code.
        code = command.main(args=args, prog_name="meshctl", complete_var="_MESHCTL_COMPLETE", standalone_mode=False)
    except _click.exceptions.NoArgsIsHelpError as exc:
        # `meshctl` or `meshctl identity` alone: the help, as cobra prints it (stdout, exit 0).
        print(exc.format_message())
        return 0
    except _click.exceptions.UsageError as exc:
        _show_usage_error(exc)
        return exc.exit_code
    except _click.exceptions.ClickException as exc:
        _error(exc.format_message())
        return exc.exit_code
    except MeshctlError as exc:
        _error(str(exc))
        return exc.exit_code
    except Abort:
        return 130
    return code if isinstance(code, int) else 0


def _error(message: str) -> None:
    sys.stderr.write(f"Error: {_common.clean_message(message)}\n")
    sys.stderr.flush()


def _show_usage_error(exc) -> None:
    """Click's usage error as click prints it (usage line, hint), with the message cleaned."""
    lines = []
    if exc.ctx is not None:
        lines.append(exc.ctx.get_usage())
        lines.append(f"Try '{exc.ctx.command_path} -h' for help.\n")
    sys.stderr.write("\n".join(lines) + "\n")
    _error(exc.format_message())

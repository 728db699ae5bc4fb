"""What every command shares: global options, consoles, output format flags.

Data goes to stdout, reports and errors to stderr.  Rich degrades to plain
text by itself when stderr is not a terminal or NO_COLOR is set; we only make
sure nothing decorative reaches a pipe.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import sys

import typer

DEFAULT_MESH_NAMESPACE = "meshctl"


@dataclasses.dataclass(frozen=True, slots=True)
class GlobalOptions:
    kubeconfig: str | None = None
    context: str | None = None
    mesh_namespace: str = DEFAULT_MESH_NAMESPACE
    verbose: bool = False


class OutputFormat(str, enum.Enum):
    yaml = "yaml"
    json = "json"


class TableFormat(str, enum.Enum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"


def global_options(ctx: typer.Context) -> GlobalOptions:
    root = ctx.find_root()
    return root.obj if isinstance(root.obj, GlobalOptions) else GlobalOptions()


@functools.cache
def err_console():
    from rich.console import Console

    # highlight=False: rich's repr highlighter would colour numbers in plain reports.
    return Console(stderr=True, highlight=False, soft_wrap=True)


def color_enabled(stream=None) -> bool:
    stream = stream or sys.stderr
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def report(line: str) -> None:
    """One plain report line on stderr (never markup-interpreted)."""
    err_console().print(line, markup=False)


NamespaceOption = typer.Option(None, "--namespace", "-n", help="Namespace of the resources (default: from kubeconfig, else 'default').")

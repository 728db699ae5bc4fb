"""``meshctl completion bash|zsh|fish``: print a shell completion script."""

from __future__ import annotations

import enum

import typer


class Shell(str, enum.Enum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def register(app: typer.Typer) -> None:
    @app.command("completion")
    def completion(shell: Shell = typer.Argument(..., help="bash, zsh or fish")) -> None:
        """Print the shell completion script, e.g. `source <(meshctl completion bash)`."""
        # typer vendors its own click (typer._click) and answers the
        # _MESHCTL_COMPLETE protocol itself; its script generator is the one
        # that matches that protocol, so we print what it generates.
        from typer._completion_shared import get_completion_script

        print(get_completion_script(prog_name="meshctl", complete_var="_MESHCTL_COMPLETE", shell=shell.value))

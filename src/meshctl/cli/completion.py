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
        from click.shell_completion import get_completion_class

        cls = get_completion_class(shell.value)
        command = typer.main.get_command(app)
        print(cls(command, {}, "meshctl", "_MESHCTL_COMPLETE").source())

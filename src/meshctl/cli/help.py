"""``meshctl help [COMMAND]...``: the help of any command, as ``linkerd help CMD`` (cobra) prints it."""

from __future__ import annotations

from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("help")
    def help_(
        ctx: typer.Context,
        command: Optional[List[str]] = typer.Argument(None, metavar="[COMMAND]...", help="The command, e.g. `viz stat`."),
    ) -> None:
        """Help about any command."""
        from typer import _click

        from meshctl.errors import UsageError

        target_ctx = ctx.find_root()
        target = target_ctx.command
        for i, name in enumerate(command or []):
            sub = getattr(target, "commands", {}).get(name)
            if sub is None:
                known = ", ".join(sorted(getattr(target, "commands", {}))) or "none"
                raise UsageError(f"unknown command {' '.join((command or [])[:i + 1])!r} (commands here: {known})")
            # A context for help only: no parsing, so a command's required arguments are not asked for.
            target_ctx = _click.Context(sub, info_name=name, parent=target_ctx)
            target = sub
        print(target.get_help(target_ctx))

"""``meshctl viz``: the observability extension's commands (Linkerd's ``linkerd viz``).

A typer sub-app; the live commands (``tap``, ``top``, ``profile --tap``) are
added from :mod:`meshctl.cli.viz_tap`.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from meshctl.cli import viz_tap

    viz = typer.Typer(name="viz", no_args_is_help=True,
                      help="Watch the mesh: golden metrics, routes, edges, and live requests (tap, top).")
    viz_tap.register_viz(viz)
    app.add_typer(viz)

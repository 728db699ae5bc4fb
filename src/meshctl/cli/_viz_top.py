"""The screen of ``meshctl viz top``: a table redrawn in place on a terminal, plain snapshots when piped.

On a terminal stdin is put in cbreak mode (no echo, keys arrive one by one)
so that ``q`` quits, and restored on every way out; Ctrl-C stops as ``q``
does.  Notices (a proxy's stream ended, reconnected) appear under the table
on a terminal, on stderr when piped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time

from meshctl.cli import _common

MAX_ROWS = 50
MAX_NOTICES = 3


def _plain(table, title: str) -> str:
    rows = [table.COLUMNS] + [table.cells(r) for r in table.sorted_rows(MAX_ROWS)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(table.COLUMNS))]
    lines = [f"# {title} at {time.strftime('%H:%M:%S')}"]
    for r in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())
    return "\n".join(lines) + "\n"


def _rich_table(table, title: str, notices: list[str]):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"{title}  (q to quit)", title_justify="left", box=None, pad_edge=False)
    for col in table.COLUMNS:
        t.add_column(col, justify="right" if col in ("Count", "Best", "Worst", "Last", "Success Rate") else "left")
    for row in table.sorted_rows(MAX_ROWS):
        t.add_row(*table.cells(row))
    if not table.rows:
        t.caption = "waiting for requests..."
    return Group(t, *(Text(n, style="yellow") for n in notices[-MAX_NOTICES:]))


@contextlib.contextmanager
def _keys(on_key):
    """Deliver single key presses from a terminal stdin to *on_key*; nothing when stdin is not a terminal."""
    if not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()
    try:
        tty.setcbreak(fd)
        loop.add_reader(fd, lambda: on_key(os.read(fd, 32)))
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run(tap, source, query, *, stop: asyncio.Event, every: float, seconds: float | None,
              title: str) -> None:
    table = tap.TopTable(source.resolver)
    changed = [False]
    notices: list[str] = []
    terminal = sys.stdout.isatty()

    def on_event(target, event):
        table.add(target, event)
        changed[0] = True

    def notice(text: str):
        if terminal:
            notices.append(text)
        else:
            _common.report(text)

    def on_key(data: bytes):
        if data[:1] in (b"q", b"Q", b"\x03"):
            stop.set()

    if seconds:
        asyncio.get_running_loop().call_later(seconds, stop.set)
    streaming = asyncio.create_task(source.run(query, on_event=on_event, notice=notice, stop=stop))
    try:
        if terminal:
            from rich.console import Console
            from rich.live import Live

            console = Console(highlight=False)
            with _keys(on_key), Live(_rich_table(table, title, notices), console=console, screen=True,
                                     auto_refresh=False) as live:
                while not streaming.done():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(streaming), every)
                    live.update(_rich_table(table, title, notices), refresh=True)
            # The alternate screen is gone: leave the last table on the normal one.
            console.print(_rich_table(table, title, []))
        else:
            while not streaming.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(streaming), every)
                if changed[0] and not streaming.done():
                    changed[0] = False
                    _write(_plain(table, title) + "\n", stop)
            _write(_plain(table, title), stop)
    finally:
        stop.set()
        await asyncio.gather(streaming, return_exceptions=True)
    streaming.result()  # a final TapError (every proxy refused or unreachable) is the command's error


def _write(text: str, stop: asyncio.Event) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        stop.set()

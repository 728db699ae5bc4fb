"""What every command shares: global options, consoles, marks, tables, output format flags.

Data goes to stdout, reports and errors to stderr.  Colour only on a terminal
and never with NO_COLOR (https://no-color.org); nothing decorative reaches a pipe.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import os
import re
import sys
import types

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


class ReportFormat(str, enum.Enum):
    """``-o`` of a command whose table has no wide form: only values that do something are listed."""

    table = "table"
    json = "json"
    yaml = "yaml"


class TableFormat(str, enum.Enum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"


# -- global flags anywhere on the line ---------------------------------------------------------

_PERSISTENT_VALUES = "meshctl.persistent-flags"


def _record_persistent(self, ctx, opts, args):
    from typer._click.core import ParameterSource

    value, args = super(type(self), self).handle_parse_result(ctx, opts, args)
    if ctx.get_parameter_source(self.name) is ParameterSource.COMMANDLINE:
        ctx.find_root().meta.setdefault(_PERSISTENT_VALUES, {})[self.name] = value
    return value, args


@functools.cache
def _persistent_class(cls: type) -> type:
    """``cls`` for the copy of a root flag in a sub-command's parser (cobra's persistent flag).

    The copy exposes no value to the command function; what the user typed is
    recorded on the root context, where :func:`global_options` finds it.
    """
    return type(f"Persistent{cls.__name__}", (cls,), {"__slots__": (), "handle_parse_result": _record_persistent,
                                                    "persistent": True})


def add_persistent_flags(group, flags) -> None:
    """Copy the root's ``flags`` into every command under ``group`` (recursively).

    A command that defines one of the same option strings itself keeps its own.
    Also gives every command the shared help layout (see :func:`_format_options`).
    """
    group.format_options = types.MethodType(_format_options, group)
    for command in group.commands.values():
        taken = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
        for flag in flags:
            if taken.isdisjoint(flag.opts):
                persistent = copy.copy(flag)
                persistent.__class__ = _persistent_class(type(flag))
                persistent.expose_value = False
                persistent.envvar = None  # $KUBECONFIG is read once, by the root
                command.params.append(persistent)
        command.format_options = types.MethodType(_format_options, command)
        if command.help and not command.short_help:
            command.short_help = _first_sentence(command.help)
        if hasattr(command, "commands"):
            add_persistent_flags(command, flags)


# Go's strconv.ParseBool, which cobra's boolean flags use for `--flag=value`.
_GO_TRUE, _GO_FALSE = {"1", "t", "T", "TRUE", "true", "True"}, {"0", "f", "F", "FALSE", "false", "False"}


def rewrite_bool_values(group, args: list[str]) -> list[str]:
    """``--switch=true|false`` as cobra accepts it for boolean flags, in click's terms.

    ``--native-sidecar=false`` becomes ``--no-native-sidecar`` (or is dropped when the
    switch has no negative form and is off by default); everything after ``--`` is left alone.
    """
    switches: dict[str, tuple[str, str | None, bool]] = {}

    def collect(command) -> None:
        for param in command.params:
            if getattr(param, "is_flag", False) and not getattr(param, "count", False):
                negative = next(iter(param.secondary_opts), None)
                for opt in param.opts:
                    if opt.startswith("--"):
                        switches[opt] = (opt, negative, bool(param.default))
        for sub in getattr(command, "commands", {}).values():
            collect(sub)

    collect(group)
    out = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        name, sep, value = arg.partition("=")
        if sep and name in switches and (value in _GO_TRUE or value in _GO_FALSE):
            positive, negative, default = switches[name]
            if value in _GO_TRUE:
                out.append(positive)
            elif negative:
                out.append(negative)
            elif default:
                out.append(arg)  # cannot be turned off: click says so
            continue
        out.append(arg)
    return out


def global_options(ctx: typer.Context) -> GlobalOptions:
    """The global flags, wherever on the line they were given (later ones win)."""
    root = ctx.find_root()
    # The root's own parse (before the command name, or $KUBECONFIG), then what came after it.
    values = {f.name: root.params[f.name] for f in dataclasses.fields(GlobalOptions) if root.params.get(f.name) is not None}
    values.update(root.meta.get(_PERSISTENT_VALUES, {}))
    return GlobalOptions(**values)


# -- help ---------------------------------------------------------------------------------------

def _first_sentence(text: str) -> str:
    # The command list shows one sentence whole, never a summary cut mid-word.
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    match = re.match(r"(.+?)(?<!e\.g)(?<!i\.e)\.(\s|$)", paragraph)
    return match.group(1) if match else paragraph


# Placeholders from the flag's name where none was given, as cobra prints
# `--wait duration` or `--proxy-image string`: what to type, not a Python type.
_PLACEHOLDERS = (
    (re.compile(r"-file$"), "FILE"), (re.compile(r"-dir$|^dir$|^out-dir$"), "DIR"),
    (re.compile(r"ports$"), "PORTS"), (re.compile(r"port$"), "PORT"), (re.compile(r"image$"), "IMAGE"),
    (re.compile(r"^addr$|^listen$|-addr$"), "HOST:PORT"),
    (re.compile(r"lifetime$|^wait$|^duration$|^ttl$|timeout$|^window$|allowance$"), "DURATION"),
    (re.compile(r"cpu-"), "CPU"), (re.compile(r"memory-"), "MEMORY"), (re.compile(r"namespace$"), "NAMESPACE"),
    (re.compile(r"^set$"), "KEY=VALUE"), (re.compile(r"^values$"), "FILE"), (re.compile(r"^output$"), "FORMAT"),
    (re.compile(r"-uid$"), "UID"), (re.compile(r"-ms$"), "MS"), (re.compile(r"rate$|^rps$"), "RATE"),
    (re.compile(r"burst$|-second$"), "N"), (re.compile(r"registry$"), "FILE"), (re.compile(r"domain$"), "DOMAIN"),
    (re.compile(r"policy$"), "POLICY"), (re.compile(r"format$"), "FORMAT"), (re.compile(r"^heartbeat$"), "SECONDS"), (re.compile(r"version$"), "VERSION"), (re.compile(r"level$"), "LEVEL"),
)


def _placeholder(param) -> str:
    if param.metavar:
        return param.metavar
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None and descriptor.is_choice and descriptor.choices:
        return "|".join(str(getattr(c, "value", c)) for c in descriptor.choices)
    long = max(param.opts, key=len).lstrip("-")
    for pattern, word in _PLACEHOLDERS:
        if pattern.search(long):
            return word
    return long.upper().replace("-", "_")


def _help_name(param) -> str:
    if param.param_type_name == "argument":
        name = param.metavar or param.name.upper()
        return name + ("..." if param.nargs != 1 and not param.metavar else "")
    names = ", ".join(sorted(param.opts, key=len))
    if param.is_flag:
        return names
    return f"{names} {_placeholder(param)}"


def _format_options(self, ctx, formatter) -> None:
    """Arguments, the command's own flags, then the global flags (as linkerd's "Global Flags")."""
    sections: dict[str, list[tuple[str, str]]] = {"Arguments": [], "Options": [], "Global flags": []}
    is_root = ctx.parent is None
    for param in self.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        record = (_help_name(param), record[1]) if param.name != "help" else record
        if param.param_type_name == "argument":
            sections["Arguments"].append(record)
        elif getattr(param, "persistent", False) or (is_root and param.name != "help"):
            sections["Global flags"].append(record)
        else:
            sections["Options"].append(record)
    for title, records in sections.items():
        if records:
            with formatter.section(title):
                formatter.write_dl(records)
    if hasattr(self, "format_commands"):
        self.format_commands(ctx, formatter)


# -- errors, consoles, marks, tables -------------------------------------------------------------

def clean_message(message: str) -> str:
    """A message starting with the problem: no validator prefix ("Value error, ...")."""
    return re.sub(r"(^|: )(Value error|Assertion failed), ", r"\1", message.strip())


@functools.cache
def err_console():
    from rich.console import Console

    # highlight=False: rich's repr highlighter would colour numbers in plain reports.
    return Console(stderr=True, highlight=False, soft_wrap=True)


def color_enabled(stream=None) -> bool:
    stream = stream or sys.stderr
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


# linkerd's marks and colours (pkg/healthcheck): green √, red ×, yellow ‼.
MARK_COLORS = {"√": "32", "×": "31", "‼": "33"}


def colorize_marks(text: str, stream=None) -> str:
    """``text`` with its √/×/‼ marks coloured when ``stream`` (default stderr) is a terminal without NO_COLOR."""
    if not color_enabled(stream):
        return text
    return re.sub("[√×‼]", lambda m: f"\x1b[{MARK_COLORS[m.group(0)]}m{m.group(0)}\x1b[0m", text)


def report(line: str) -> None:
    """One report line on stderr (never markup-interpreted); marks coloured on a terminal."""
    sys.stderr.write(colorize_marks(line, sys.stderr) + "\n")
    sys.stderr.flush()


def dump(data, fmt: str) -> str:
    """``data`` as JSON or YAML text (what every ``-o json|yaml`` prints)."""
    import json

    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    return json.dumps(data, indent=2) + "\n"


NamespaceOption = typer.Option(None, "--namespace", "-n", metavar="NAMESPACE",
                               help="Namespace of the resources (default: from kubeconfig, else 'default').")

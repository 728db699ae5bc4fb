"""ServiceProfiles from protobuf service definitions (gRPC).

gRPC calls are ``POST /package.Service/Method`` (gRPC over HTTP/2, "Path"
in the protocol spec), so each rpc becomes one route with that exact path.  A
route is retryable when the rpc declares ``option idempotency_level =
IDEMPOTENT`` or ``NO_SIDE_EFFECTS`` (descriptor.proto's MethodOptions): the
server has promised a repeat is harmless.

A small parser of ``.proto`` text, not protoc: it reads what routes need
(``package``, ``service``, ``rpc``, rpc options) and skips the rest with
balanced braces, so imports need not be present.  Errors name the line.
"""

from __future__ import annotations

import dataclasses
import re

from meshctl.errors import InputError
from meshctl.profiles.openapi import path_regex
from meshctl_proxy.policy.service_profile import RequestMatch, Route, ServiceProfile

RETRYABLE_LEVELS = frozenset({"IDEMPOTENT", "NO_SIDE_EFFECTS"})

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<ident>\.?[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<number>[-+]?[0-9][0-9A-Za-z_.+-]*)
  | (?P<symbol>[{}()\[\]<>;=,:.-])
""", re.VERBOSE | re.DOTALL)


@dataclasses.dataclass(frozen=True, slots=True)
class Rpc:
    service: str  # fully qualified: package.Service
    method: str
    idempotency_level: str | None

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"


def parse_rpcs(text: str, *, source: str) -> list[Rpc]:
    return _Parser(text, source).file()


def from_proto(text: str, *, name: str, namespace: str, source: str = "proto") -> ServiceProfile:
    rpcs = parse_rpcs(text, source=source)
    if not rpcs:
        raise InputError(f"{source}: no service with an rpc, so there are no routes to make")
    # Named by the rpc alone, in the file's order, as linkerd's protoToServiceProfile names them:
    # dashboards and `rt_route="GetPrice"` queries written for Linkerd keep working.
    routes = [
        Route(name=rpc.method, condition=RequestMatch(method="POST", path_regex=path_regex(rpc.path)),
              is_retryable=rpc.idempotency_level in RETRYABLE_LEVELS)
        for rpc in rpcs
    ]
    return ServiceProfile(name=name, namespace=namespace, routes=tuple(routes))


class _Parser:
    def __init__(self, text: str, source: str):
        self.source = source
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, line)
        line, pos = 1, 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                if text.startswith("/*", pos):
                    self.fail(line, "unterminated /* comment")
                self.fail(line, f"unexpected character {text[pos]!r}")
            kind = m.lastgroup
            if kind not in ("space", "comment"):
                self.tokens.append((kind, m.group(), line))
            line += m.group().count("\n")
            pos = m.end()
        self.i = 0
        self.end_line = line

    def fail(self, line: int, message: str):
        raise InputError(f"{self.source}:{line}: {message}")

    def peek(self) -> tuple[str, str, int]:
        return self.peek_at(0)

    def peek_at(self, ahead: int) -> tuple[str, str, int]:
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else ("eof", "", self.end_line)

    def take(self, expected: str | None = None, *, kind: str | None = None) -> str:
        tok_kind, text, line = self.peek()
        if (expected is not None and text != expected) or (kind is not None and tok_kind != kind):
            want = repr(expected) if expected is not None else "a name" if kind == "ident" else f"a {kind}"
            got = "end of file" if tok_kind == "eof" else repr(text)
            self.fail(line, f"expected {want}, got {got}")
        self.i += 1
        return text

    def skip_statement(self) -> None:
        """Skip to the end of a statement: a ';' or a balanced {...} block, whichever ends it."""
        depth = 0
        while True:
            kind, text, line = self.peek()
            if kind == "eof":
                self.fail(line, "unexpected end of file (unbalanced braces?)")
            self.i += 1
            if text == "{":
                depth += 1
            elif text == "}":
                depth -= 1
                if depth == 0:
                    return
                if depth < 0:
                    self.fail(line, "unexpected '}'")
            elif text == ";" and depth == 0:
                return

    def file(self) -> list[Rpc]:
        package = ""
        rpcs: list[Rpc] = []
        while self.peek()[0] != "eof":
            kind, text, line = self.peek()
            if text == "package":
                self.i += 1
                package = self.take(kind="ident").lstrip(".")
                self.take(";")
            elif text == "service":
                self.i += 1
                name = self.take(kind="ident")
                rpcs.extend(self.service(f"{package}.{name}" if package else name))
            elif text == ";":
                self.i += 1
            else:
                self.skip_statement()
        return rpcs

    def service(self, service: str) -> list[Rpc]:
        self.take("{")
        rpcs = []
        while True:
            kind, text, line = self.peek()
            if text == "}":
                self.i += 1
                return rpcs
            if kind == "eof":
                self.fail(line, f"service {service}: missing '}}'")
            if text == "rpc":
                self.i += 1
                rpcs.append(self.rpc(service))
            elif text == ";":
                self.i += 1
            else:
                self.skip_statement()  # option ...; and anything newer than this parser

    def rpc(self, service: str) -> Rpc:
        method = self.take(kind="ident")
        for word in ("(", None, ")", "returns", "(", None, ")"):
            if word is None:
                if self.peek()[1] == "stream":
                    self.i += 1
                self.take(kind="ident")
            else:
                self.take(word)
        level = None
        if self.peek()[1] == "{":
            self.i += 1
            while True:
                kind, text, line = self.peek()
                if text == "}":
                    self.i += 1
                    break
                if kind == "eof":
                    self.fail(line, f"rpc {method}: missing '}}'")
                if text == "option" and self.peek_at(1)[1] == "idempotency_level":
                    self.i += 2
                    self.take("=")
                    level = self.take(kind="ident")
                    if level not in ("IDEMPOTENCY_UNKNOWN", *RETRYABLE_LEVELS):
                        self.fail(line, f"rpc {method}: unknown idempotency_level {level}")
                    self.take(";")
                elif text == ";":
                    self.i += 1
                else:
                    self.skip_statement()
        else:
            self.take(";")
        return Rpc(service=service, method=method, idempotency_level=level)

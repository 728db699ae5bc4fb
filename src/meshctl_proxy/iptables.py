"""``meshctl-proxy init``: program the pod's nat table to send TCP through the proxy.

This is the init container's job, as linkerd2-proxy-init does it
(``proxy-init/pkg/iptables/iptables.go``): two chains of our own in the nat
table, entered by one jump each from the built-in chains.

``PROXY_INIT_REDIRECT`` (from ``PREROUTING``: connections arriving at the pod)::

    ignore the inbound ports to skip (always 4190/4191, the proxy's own)
    ignore the source subnets to skip
    REDIRECT everything else to the inbound port (4143)

``PROXY_INIT_OUTPUT`` (from ``OUTPUT``: connections the pod opens)::

    the proxy dialling its own pod's IP over lo -> PROXY_INIT_REDIRECT
    ignore the proxy's uid (its own outbound connections)
    ignore lo (the app talking to itself, the proxy forwarding to the app)
    ignore the outbound ports and destination subnets to skip
    REDIRECT everything else to the outbound port (4140)

The rule set is computed by pure functions (:func:`build_rules`,
:func:`render_install`, :func:`render_remove`) and applied in one
``iptables-restore --noflush`` transaction per address family, so a failure
leaves nothing half-written.  Declaring our chains in the restore input
flushes them first, and a jump already present is not added again: re-running
converges to the requested rules instead of stacking duplicates.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence

from meshctl_proxy.config import ADMIN_PORT, CONTROL_PORT, InitConfig, parse_networks

REDIRECT_CHAIN = "PROXY_INIT_REDIRECT"
OUTPUT_CHAIN = "PROXY_INIT_OUTPUT"
OUR_CHAINS = (REDIRECT_CHAIN, OUTPUT_CHAIN)
# Which built-in chain enters which of ours.
ENTRY = (("PREROUTING", REDIRECT_CHAIN, "install-prerouting"), ("OUTPUT", OUTPUT_CHAIN, "install-output"))
COMMENT_PREFIX = "meshctl-proxy-init/"
# The multiport match takes at most 15 ports, a range counting as two
# (xt_multiport.h XT_MULTI_PORTS); linkerd splits its skip lists the same way.
MULTIPORT_LIMIT = 15
LOOPBACK = {4: "127.0.0.1/32", 6: "::1/128"}
MODES = ("auto", "nft", "legacy")


class InitError(Exception):
    """A problem ``meshctl-proxy init`` reports in one line and exits 1 for."""


class UsageError(InitError):
    """A bad flag or value: exit status 2, as for any usage error."""


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """One ``-A CHAIN ...`` line; *comment* names it, as linkerd's rules are named."""

    chain: str
    spec: tuple[str, ...]
    comment: str

    def render(self) -> str:
        comment = f'-m comment --comment "{COMMENT_PREFIX}{self.comment}"'
        # The comment goes before the target, where iptables-save prints it.
        target_at = self.spec.index("-j")
        matches, target = self.spec[:target_at], self.spec[target_at:]
        return " ".join(["-A", self.chain, *matches, comment, *target])


# --- parsing the flags ----------------------------------------------------------

def parse_port_ranges(items: Sequence[str], *, flag: str) -> tuple[tuple[int, int], ...]:
    """Ports and ranges (``80``, ``8080-8090``, ``8080:8090``), sorted, overlaps merged.

    Adjacent single ports stay apart (``4190,4191``) so the rules read as the
    flags were written.
    """
    ranges: list[tuple[int, int]] = []
    for item in items:
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            lo, sep, hi = part.replace(":", "-").partition("-")
            if not lo.isdigit() or (sep and not hi.isdigit()):
                raise UsageError(f"{flag}: bad port or range {part!r}")
            first, last = int(lo), int(hi) if sep else int(lo)
            if not 0 < first <= last <= 65535:
                raise UsageError(f"{flag}: port range {part!r} outside 1..65535")
            ranges.append((first, last))
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return tuple(merged)


def parse_subnets(items: Sequence[str], *, flag: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        nets = parse_networks(",".join(items))
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc} (expected CIDR like 10.0.0.0/8)") from None
    return tuple(dict.fromkeys(nets))


def _ranges_text(ranges: Sequence[tuple[int, int]]) -> tuple[str, ...]:
    return tuple(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


@dataclasses.dataclass(frozen=True, slots=True)
class InitOptions:
    """How to apply: the flags that are not part of the rules themselves."""

    remove: bool = False
    dry_run: bool = False
    mode: str = "auto"
    ipv6: bool = False


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="meshctl-proxy init", description=(
        "Program the nat table so that the pod's TCP goes through the proxy "
        "(inbound to --incoming-proxy-port, outbound to --outgoing-proxy-port)."))
    d = InitConfig()
    p.add_argument("--incoming-proxy-port", type=int, default=d.inbound_port, metavar="PORT",
                   help=f"where inbound TCP is redirected (default {d.inbound_port})")
    p.add_argument("--outgoing-proxy-port", type=int, default=d.outbound_port, metavar="PORT",
                   help=f"where the app's outbound TCP is redirected (default {d.outbound_port})")
    p.add_argument("--proxy-uid", type=int, default=d.proxy_uid, metavar="UID",
                   help=f"the proxy's uid, whose connections are never redirected (default {d.proxy_uid})")
    p.add_argument("--inbound-ports-to-ignore", action="append", default=[], metavar="PORTS",
                   help=f"inbound ports/ranges not redirected (comma-separated; {CONTROL_PORT},{ADMIN_PORT} always)")
    p.add_argument("--outbound-ports-to-ignore", action="append", default=[], metavar="PORTS",
                   help="outbound destination ports/ranges not redirected")
    p.add_argument("--subnets-to-ignore", action="append", default=[], metavar="CIDRS",
                   help="networks not redirected: inbound from them, outbound to them")
    p.add_argument("--iptables-mode", choices=MODES, default="auto",
                   help="iptables backend; auto picks the one already holding rules, else nft (default auto)")
    # Off by default, as Linkerd's chart has it (disableIPv6: true): the proxy's
    # listeners are IPv4 (127.0.0.1:4140, 0.0.0.0:4143), so redirecting IPv6
    # would turn the app's working IPv6 connections into refused ones.
    p.add_argument("--ipv6", action=argparse.BooleanOptionalAction, default=False,
                   help="also program ip6tables; only with a proxy listening on IPv6 (default off)")
    p.add_argument("--dry-run", action="store_true", help="print the iptables-restore input instead of applying it")
    p.add_argument("--remove", action="store_true", help="remove the chains and jumps this command installs")
    return p


def parse_args(argv: Sequence[str]) -> tuple[InitConfig, InitOptions]:
    ns = _parser().parse_args(list(argv))
    for flag, port in (("--incoming-proxy-port", ns.incoming_proxy_port),
                       ("--outgoing-proxy-port", ns.outgoing_proxy_port)):
        if not 0 < port <= 65535:
            raise UsageError(f"{flag}: port {port} outside 1..65535")
    if ns.incoming_proxy_port == ns.outgoing_proxy_port:
        raise UsageError("--incoming-proxy-port and --outgoing-proxy-port must differ")
    if ns.proxy_uid < 0:
        raise UsageError(f"--proxy-uid: {ns.proxy_uid} is not a uid")
    inbound = parse_port_ranges([f"{CONTROL_PORT},{ADMIN_PORT}", *ns.inbound_ports_to_ignore],
                                flag="--inbound-ports-to-ignore")
    outbound = parse_port_ranges(ns.outbound_ports_to_ignore, flag="--outbound-ports-to-ignore")
    subnets = parse_subnets(ns.subnets_to_ignore, flag="--subnets-to-ignore")
    cfg = InitConfig(
        inbound_port=ns.incoming_proxy_port,
        outbound_port=ns.outgoing_proxy_port,
        proxy_uid=ns.proxy_uid,
        inbound_ports_to_ignore=_ranges_text(inbound),
        outbound_ports_to_ignore=_ranges_text(outbound),
        subnets_to_ignore=tuple(str(n) for n in subnets),
    )
    return cfg, InitOptions(remove=ns.remove, dry_run=ns.dry_run, mode=ns.iptables_mode, ipv6=ns.ipv6)


# --- the rules (pure) -----------------------------------------------------------

def _multiport_groups(ranges: Sequence[tuple[int, int]]) -> list[list[str]]:
    groups: list[list[str]] = []
    used = MULTIPORT_LIMIT
    for first, last in ranges:
        cost = 1 if first == last else 2
        if used + cost > MULTIPORT_LIMIT:
            groups.append([])
            used = 0
        groups[-1].append(str(first) if first == last else f"{first}:{last}")
        used += cost
    return groups


def _ignore_ports(chain: str, ranges: Sequence[tuple[int, int]]) -> list[Rule]:
    return [Rule(chain, ("-p", "tcp", "-m", "multiport", "--dports", ",".join(g), "-j", "RETURN"),
                 f"ignore-port-{','.join(g)}") for g in _multiport_groups(ranges)]


def build_rules(cfg: InitConfig, *, family: int) -> tuple[Rule, ...]:
    """The rules of both chains plus the two entry jumps, for IPv4 (4) or IPv6 (6)."""
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family}")
    inbound = parse_port_ranges(cfg.inbound_ports_to_ignore, flag="--inbound-ports-to-ignore")
    outbound = parse_port_ranges(cfg.outbound_ports_to_ignore, flag="--outbound-ports-to-ignore")
    subnets = [n for n in parse_subnets(cfg.subnets_to_ignore, flag="--subnets-to-ignore") if n.version == family]
    uid = str(cfg.proxy_uid)

    rules: list[Rule] = []
    rules += _ignore_ports(REDIRECT_CHAIN, inbound)
    # Linkerd's --subnets-to-ignore skips inbound traffic *from* those networks.
    rules += [Rule(REDIRECT_CHAIN, ("-s", str(n), "-j", "RETURN"), f"ignore-subnet-{n}") for n in subnets]
    rules.append(Rule(REDIRECT_CHAIN, ("-p", "tcp", "-j", "REDIRECT", "--to-ports", str(cfg.inbound_port)),
                      "redirect-all-incoming-to-proxy-port"))

    # The outbound proxy dialling its own pod's IP leaves through lo and would
    # otherwise skip the inbound side; linkerd sends it to the redirect chain
    # so app -> proxy(out) -> proxy(in) -> app holds for a pod calling itself.
    rules.append(Rule(OUTPUT_CHAIN, ("-o", "lo", "!", "-d", LOOPBACK[family], "-m", "owner", "--uid-owner", uid,
                                     "-j", REDIRECT_CHAIN), "redirect-non-loopback-local-traffic"))
    rules.append(Rule(OUTPUT_CHAIN, ("-m", "owner", "--uid-owner", uid, "-j", "RETURN"), "ignore-proxy-user-id"))
    rules.append(Rule(OUTPUT_CHAIN, ("-o", "lo", "-j", "RETURN"), "ignore-loopback"))
    rules += _ignore_ports(OUTPUT_CHAIN, outbound)
    # And outbound traffic *to* them (e.g. a node-local metadata service);
    # linkerd has no outbound equivalent, a skip list that ignores one
    # direction only surprised us.
    rules += [Rule(OUTPUT_CHAIN, ("-d", str(n), "-j", "RETURN"), f"ignore-subnet-{n}") for n in subnets]
    rules.append(Rule(OUTPUT_CHAIN, ("-p", "tcp", "-j", "REDIRECT", "--to-ports", str(cfg.outbound_port)),
                      "redirect-all-outgoing-to-proxy-port"))

    rules += [Rule(builtin, ("-j", ours), comment) for builtin, ours, comment in ENTRY]
    return tuple(rules)


def _save_rules(saved: str) -> list[list[str]]:
    """The ``-A`` lines of the nat table in iptables-save output, tokenised."""
    rules, in_nat = [], False
    for line in saved.splitlines():
        if line.startswith("*"):
            in_nat = line.strip() == "*nat"
        elif in_nat and line.startswith("-A "):
            rules.append(shlex.split(line))
    return rules


def _jumps_present(saved: str) -> list[list[str]]:
    """Rules in a built-in chain whose target is one of our chains."""
    out = []
    for tokens in _save_rules(saved):
        if tokens[1] not in OUR_CHAINS and "-j" in tokens and tokens[tokens.index("-j") + 1] in OUR_CHAINS:
            out.append(tokens)
    return out


def _restore_join(tokens: Sequence[str]) -> str:
    # iptables-restore understands double quotes only (not shlex's single quotes).
    return " ".join(f'"{t}"' if not t or any(c.isspace() or c in "'\"" for c in t) else t for t in tokens)


def _chains_present(saved: str) -> set[str]:
    chains, in_nat = set(), False
    for line in saved.splitlines():
        if line.startswith("*"):
            in_nat = line.strip() == "*nat"
        elif in_nat and line.startswith(":"):
            chains.add(line[1:].split()[0])
    return chains


def render_install(rules: Sequence[Rule], *, saved: str = "") -> str:
    """iptables-restore (``--noflush``) input installing *rules*.

    *saved* is the current ``iptables-save -t nat``: entry jumps already there
    are not added twice.  Our chains are declared, which flushes them, so their
    contents are replaced whatever they held.
    """
    existing = {(t[1], t[t.index("-j") + 1]) for t in _jumps_present(saved)}
    lines = ["*nat", *(f":{chain} - [0:0]" for chain in OUR_CHAINS)]
    for rule in rules:
        if rule.chain in OUR_CHAINS or (rule.chain, rule.spec[-1]) not in existing:
            lines.append(rule.render())
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_remove(saved: str) -> str | None:
    """iptables-restore input removing our jumps and chains, or None if nothing is installed."""
    lines = []
    for tokens in _jumps_present(saved):
        lines.append(_restore_join(["-D", *tokens[1:]]))
    present = [c for c in OUR_CHAINS if c in _chains_present(saved)]
    lines += [f"-F {c}" for c in present]
    lines += [f"-X {c}" for c in present]
    if not lines:
        return None
    return "\n".join(["*nat", *lines, "COMMIT"]) + "\n"


# --- applying -------------------------------------------------------------------

Runner = Callable[..., subprocess.CompletedProcess]


@dataclasses.dataclass(frozen=True, slots=True)
class Backend:
    mode: str  # "nft" or "legacy"

    def tool(self, family: int, what: str) -> str:
        """``iptables-nft-restore``, ``ip6tables-legacy-save``, ..."""
        base = "iptables" if family == 4 else "ip6tables"
        return f"{base}-{self.mode}-{what}"


def _run(run: Runner, argv: list[str], *, input: str | None = None) -> subprocess.CompletedProcess:
    try:
        return run(argv, input=input, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"{argv[0]}: timed out after 30s")


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no output")


def detect_backend(mode: str, run: Runner = subprocess.run) -> Backend:
    """Pick iptables-nft or iptables-legacy, as kube's iptables-wrapper does.

    Rules already installed through one backend decide (mixing them leaves two
    rule sets the kernel both applies, invisible to each other's tools);
    otherwise nft, the default of current distributions, if it works.
    """
    if mode in ("nft", "legacy"):
        return Backend(mode)
    counts: dict[str, int] = {}
    errors = []
    for candidate in ("nft", "legacy"):
        proc = _run(run, [Backend(candidate).tool(4, "save")])
        if proc.returncode == 0:
            counts[candidate] = sum(line.startswith("-A ") for line in proc.stdout.splitlines())
        else:
            errors.append(_first_line(proc.stderr))
    if not counts:
        raise InitError(f"no working iptables backend ({'; '.join(errors)})")
    if counts.get("legacy", 0) > counts.get("nft", 0):
        return Backend("legacy")
    return Backend("nft") if "nft" in counts else Backend("legacy")


def apply(cfg: InitConfig, opts: InitOptions, *, run: Runner = subprocess.run, out=sys.stdout) -> None:
    families = (4, 6) if opts.ipv6 else (4,)
    if opts.dry_run and not opts.remove:
        for family in families:
            name = "iptables" if family == 4 else "ip6tables"
            out.write(f"# {name}-restore --noflush\n")
            out.write(render_install(build_rules(cfg, family=family)))
        return
    backend = detect_backend(opts.mode, run)
    if opts.remove:
        # Removal cleans IPv6 too even without --ipv6: an earlier run may have
        # used it, and leftover redirects would break the pod's traffic.
        families = (4, 6)
    scripts = []
    for family in families:
        saved = _run(run, [backend.tool(family, "save"), "-t", "nat"])
        if saved.returncode != 0:
            if family == 6 and not opts.ipv6:
                continue  # no IPv6 netfilter here: nothing of ours can be there
            raise InitError(f"{backend.tool(family, 'save')} failed: {_first_line(saved.stderr)}")
        script = render_remove(saved.stdout) if opts.remove else \
            render_install(build_rules(cfg, family=family), saved=saved.stdout)
        scripts.append((family, script))
    for family, script in scripts:
        if script is None:
            continue
        restore = backend.tool(family, "restore")
        if opts.dry_run:
            out.write(f"# {restore} --noflush\n{script}")
            continue
        # -w: wait for the xtables lock rather than fail if another writer holds it.
        proc = _run(run, [restore, "-w", "5", "--noflush"], input=script)
        if proc.returncode != 0:
            raise InitError(f"{restore} failed: {_first_line(proc.stderr)}")


def main(argv: Sequence[str]) -> int:
    try:
        cfg, opts = parse_args(argv)
        apply(cfg, opts)
    except UsageError as exc:
        print(f"meshctl-proxy init: {exc}", file=sys.stderr)
        return 2
    except InitError as exc:
        print(f"meshctl-proxy init: {exc}", file=sys.stderr)
        return 1
    return 0

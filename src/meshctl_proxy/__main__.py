"""Entry point: ``meshctl-proxy`` / ``python -m meshctl_proxy``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["--version"], ["version"]):
        from meshctl_proxy import __version__
        print(f"meshctl-proxy {__version__}")
        return 0
    if args[:1] == ["init"]:
        from meshctl_proxy.iptables import main as init_main

        return init_main(args[1:])
    if args[:1] in (["-h"], ["--help"]):
        print("usage: meshctl-proxy [--version | init [flags]]\n"
              "Runs the sidecar proxy, configured by MESHCTL_PROXY_* variables (docs/proxy.md).")
        return 0
    from meshctl_proxy import config
    try:
        cfg = config.load(__import__("os").environ)
    except config.ConfigError as exc:
        print(f"meshctl-proxy: {exc}", file=sys.stderr)
        return 2
    if args:
        print(f"meshctl-proxy: unexpected argument {args[0]!r} (see --help)", file=sys.stderr)
        return 2
    from meshctl_proxy.transport.server import run

    try:
        return run(cfg)
    except config.ConfigError as exc:  # found when the runtime is built (e.g. identity settings)
        print(f"meshctl-proxy: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a listener could not bind: say which address
        print(f"meshctl-proxy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

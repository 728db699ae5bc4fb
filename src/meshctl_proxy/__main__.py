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
        config.load(__import__("os").environ)
    except config.ConfigError as exc:
        print(f"meshctl-proxy: {exc}", file=sys.stderr)
        return 2
    print("meshctl-proxy: the proxy runtime is not built yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

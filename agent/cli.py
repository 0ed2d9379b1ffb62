"""The `slipstream` command: the composition root, one subcommand per app.

This is the only module that imports every app of the `agent` package (node,
ca, lab, tools); each registers its subcommands through its `cli.register`.
Apps never import each other. The gateway, a package of its own, adds its
subcommand through the `slipstream.commands` entry-point group, so nothing in
`agent` imports `gateway`.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from agent.ca import cli as ca_cli
from agent.cni import cli as cni_cli
from agent.common import log as logsetup
from agent.common.errors import SlipstreamError
from agent.lab import apps, demo
from agent.lab import cli as lab_cli
from agent.node import cli as node_cli
from agent.tools import policy_check


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("logging")
    g.add_argument("--log-format", choices=["text", "json"], default="text", help="log line format")
    g.add_argument("--log-level", default="info", help="debug, info, warning or error")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slipstream",
        description="Slipstream: a sidecarless service mesh (eBPF capture, HBONE mTLS, L4 policy) "
        "with an edge API gateway.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parents = [common_options()]
    node_cli.register(sub, parents)
    ca_cli.register(sub, parents)
    cni_cli.register(sub, parents)
    lab_cli.register(sub, parents)
    policy_check.register(sub, parents)
    demo.register(sub, parents)
    apps.register(sub, parents)
    for ep in entry_points(group="slipstream.commands"):
        ep.load()(sub, parents)
    return parser


def _errors(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [e for sub in exc.exceptions for e in _errors(sub)]
    return [exc]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logsetup.setup(args.log_format, args.log_level)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # unwrap TaskGroup errors so users see the message
        errors = _errors(exc)
        if all(isinstance(e, SlipstreamError) for e in errors):
            for e in errors:
                print(f"slipstream {args.command}: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())

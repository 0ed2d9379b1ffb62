"""`slipstream gateway`: run the edge API gateway (a slipstream.commands entry point)."""

from __future__ import annotations

import argparse

import uvloop

from agent.admin import parse_addr

from .master import Master


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "gateway",
        parents=parents,
        help="run the edge API gateway",
        description="Serve the gateway described by a configuration file (routes, backends, "
        "plugins), reloading it on change; with --source, also Gateway API objects.",
    )
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="gateway.yaml")
    p.add_argument(
        "--source",
        metavar="file:DIR",
        help="Gateway API objects (Gateway, HTTPRoute) and Services, as the agents read them",
    )
    p.add_argument("--workers", type=int, help="worker processes (overrides the file)")
    p.add_argument("--admin", metavar="ADDR", help="admin API address (overrides the file)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    master = Master(
        args.config,
        source=args.source,
        workers=args.workers,
        admin=parse_addr(args.admin, "127.0.0.1") if args.admin else None,
        log_format=args.log_format,
        log_level=args.log_level,
    )
    uvloop.run(master.run())
    return 0

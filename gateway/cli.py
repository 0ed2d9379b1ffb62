"""`slipstream gateway`: run the edge API gateway (a slipstream.commands entry point)."""

from __future__ import annotations

import argparse
import os

import uvloop

from agent.common.constants import DEFAULT_TRUST_DOMAIN
from agent.common.units import parse_address
from agent.sources.flags import add_source_flags

from .errors import GatewayError
from .master import Master
from .mesh import MeshSettings


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "gateway",
        parents=parents,
        help="run the edge API gateway",
        description="Serve the gateway described by a configuration file (routes, backends, "
        "plugins), reloading it on change; with --source, also Gateway API objects.",
    )
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="gateway.yaml")
    add_source_flags(
        p,
        "Gateway API objects (Gateway, HTTPRoute) and Services, as the agents read them",
        required=False,
        default=os.environ.get("SLIPSTREAM_SOURCE"),
    )
    env = os.environ.get
    m = p.add_argument_group(
        "mesh",
        "the gateway's own identity, to reach enrolled Services over HBONE (defaults from the "
        "SLIPSTREAM_* environment the lab gives pods annotated slipstream.dev/mesh-credentials)",
    )
    m.add_argument("--ca", default=env("SLIPSTREAM_CA"), metavar="HOST:PORT", help="the mesh CA")
    m.add_argument("--ca-root", default=env("SLIPSTREAM_CA_ROOT"), metavar="FILE",
                   help="PEM trust bundle to start with")  # fmt: skip
    m.add_argument("--ca-token-file", default=env("SLIPSTREAM_CA_TOKEN_FILE"), metavar="FILE",
                   help="the gateway's own credential for the CA")  # fmt: skip
    m.add_argument("--identity", default=env("SLIPSTREAM_IDENTITY"), metavar="SPIFFE_ID",
                   help="the gateway's SPIFFE ID (spiffe://TD/ns/NS/sa/SA)")  # fmt: skip
    m.add_argument("--trust-domain", default=env("SLIPSTREAM_TRUST_DOMAIN", DEFAULT_TRUST_DOMAIN))
    p.add_argument("--workers", type=int, help="worker processes (overrides the file)")
    p.add_argument("--admin", metavar="ADDR", help="admin API address (overrides the file)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    mesh = None
    if args.ca:
        missing = [f for f in ("ca_root", "ca_token_file", "identity") if not getattr(args, f)]
        if missing:
            flags = ", ".join("--" + f.replace("_", "-") for f in missing)
            raise GatewayError(f"--ca also needs {flags}")
        mesh = MeshSettings(
            args.ca, args.ca_root, args.ca_token_file, args.identity, args.trust_domain
        )
    master = Master(
        args.config,
        source=args.source,
        kubeconfig=args.kubeconfig,
        mesh=mesh,
        workers=args.workers,
        admin=parse_address(args.admin, "127.0.0.1", listen=True) if args.admin else None,
        log_format=args.log_format,
        log_level=args.log_level,
    )
    uvloop.run(master.run())
    return 0

"""The `slipstream` command: one entry point, one subcommand per component.

Subcommands of this package register here; other packages (the gateway) add
theirs through the `slipstream.commands` entry-point group, so the agent
package never imports them.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from importlib.metadata import entry_points

from . import log as logsetup
from .errors import SlipstreamError
from .hbone.limits import Limits, PeerLimits
from .identity.certs import DEFAULT_TRUST_DOMAIN
from .policy.peerauth import ROOT_NAMESPACE


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("logging")
    g.add_argument("--log-format", choices=["text", "json"], default="text", help="log line format")
    g.add_argument("--log-level", default="info", help="debug, info, warning or error")
    return p


def _register_agent(
    sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]
) -> None:
    p = sub.add_parser(
        "agent",
        parents=parents,
        help="run the node agent",
        description="Run the node agent: capture, tunnel and policy for this node's pods.",
    )
    p.add_argument("--node", required=True, help="the name of the node this agent serves")
    p.add_argument(
        "--source",
        required=True,
        metavar="SOURCE",
        help="where cluster objects come from: file:DIR (a watched directory of manifests)",
    )
    p.add_argument(
        "--admin",
        default="127.0.0.1:15000",
        metavar="ADDR",
        help="admin endpoint, /config_dump and /logging (default %(default)s)",
    )
    p.add_argument(
        "--ready",
        default="0.0.0.0:15021",
        metavar="ADDR",
        help="readiness endpoint, /healthz/ready (default %(default)s)",
    )
    p.add_argument(
        "--state-dir",
        default="/run/slipstream/agent",
        metavar="DIR",
        help="where the agent remembers what it changed in pods (default %(default)s)",
    )
    p.add_argument(
        "--netns-dir",
        default="/run/netns",
        metavar="DIR",
        help="pods' network namespaces must live here (default %(default)s)",
    )
    p.add_argument(
        "--capture",
        choices=["ebpf", "iptables"],
        default="ebpf",
        help="ebpf (default), or iptables REDIRECT: outbound only, the baseline for benchmarks",
    )
    p.add_argument(
        "--cleanup",
        action="store_true",
        help="on exit, remove capture from every pod instead of leaving them to fail closed",
    )
    p.add_argument(
        "--root-namespace",
        default=ROOT_NAMESPACE,
        metavar="NS",
        help="policies here apply mesh-wide (default %(default)s)",
    )
    g = p.add_argument_group(
        "identity (without --ca: no mTLS, captured traffic is relayed in plaintext)"
    )
    g.add_argument("--ca", metavar="HOST:PORT", help="the mesh CA (slipstream ca serve)")
    g.add_argument(
        "--ca-root", metavar="FILE", help="PEM trust bundle to start with (the CA's roots)"
    )
    g.add_argument(
        "--ca-token-file",
        metavar="FILE",
        help="this node's credential for the CA (re-read when it changes: rotate it in place)",
    )
    g.add_argument(
        "--trust-domain",
        default=DEFAULT_TRUST_DOMAIN,
        help="the mesh's trust domain, as the CA's (default %(default)s)",
    )
    g.add_argument(
        "--cert-ttl", default="24h", help="workload certificate life (default %(default)s)"
    )
    g.add_argument(
        "--bundle-refresh",
        default="60s",
        help="how often to fetch the trust bundle (default %(default)s)",
    )
    g = p.add_argument_group(
        "HBONE limits: what one peer may hold on this agent (the others: agent/hbone/limits.py)"
    )
    peers = PeerLimits()
    g.add_argument(
        "--hbone-max-connections-per-identity",
        type=int,
        default=peers.max_connections_per_identity,
        metavar="N",
        help="inbound HBONE connections one peer identity may hold (default %(default)s)",
    )
    g.add_argument(
        "--hbone-max-streams-per-identity",
        type=int,
        default=peers.max_streams_per_identity,
        metavar="N",
        help="open inbound HBONE streams one peer identity may hold (default %(default)s)",
    )
    p.set_defaults(func=_run_agent)


def _run_agent(args: argparse.Namespace) -> int:
    from .admin import parse_addr
    from .app import AgentConfig, main
    from .identity.certs import parse_duration

    main(
        AgentConfig(
            node=args.node,
            source=args.source,
            admin_addr=parse_addr(args.admin, "127.0.0.1"),
            ready_addr=parse_addr(args.ready, "0.0.0.0"),
            state_dir=args.state_dir,
            netns_dir=args.netns_dir,
            capture=args.capture,
            cleanup=args.cleanup,
            ca=args.ca,
            ca_root=args.ca_root,
            ca_token_file=args.ca_token_file,
            trust_domain=args.trust_domain,
            root_namespace=args.root_namespace,
            cert_ttl=parse_duration(args.cert_ttl),
            bundle_refresh=parse_duration(args.bundle_refresh).total_seconds(),
            hbone_limits=Limits(peers=_peer_limits(args)),
        )
    )
    return 0


def _peer_limits(args: argparse.Namespace) -> PeerLimits:
    limits = PeerLimits(
        max_connections_per_identity=args.hbone_max_connections_per_identity,
        max_streams_per_identity=args.hbone_max_streams_per_identity,
    )
    for name, value in asdict(limits).items():
        if value < 1:
            flag = "--hbone-" + name.replace("_", "-")
            raise SlipstreamError(f"{flag} must be at least 1, not {value}")
    return limits


def build_parser() -> argparse.ArgumentParser:
    from .ca import cli as ca_cli
    from .lab import apps, demo
    from .lab import cli as lab_cli
    from .policy import cli as policy_cli

    parser = argparse.ArgumentParser(
        prog="slipstream",
        description="Slipstream: a sidecarless service mesh (eBPF capture, HBONE mTLS, L4 policy) "
        "with an edge API gateway.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parents = [common_options()]
    _register_agent(sub, parents)
    ca_cli.register(sub, parents)
    lab_cli.register(sub, parents)
    policy_cli.register(sub, parents)
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

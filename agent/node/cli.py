"""`slipstream agent`: run the node agent; `slipstream drain`: its preStop hook (registered
by agent/cli.py)."""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict

from agent.common.constants import ADMIN_PORT, CNI_SOCKET, DEFAULT_TRUST_DOMAIN, READY_PORT
from agent.common.errors import SlipstreamError
from agent.common.units import parse_address, parse_duration, parse_timedelta
from agent.hbone.limits import Limits, PeerLimits
from agent.policy.peerauth import ROOT_NAMESPACE
from agent.sources.flags import add_source_flags

from .app import AgentConfig, main


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "agent",
        parents=parents,
        help="run the node agent",
        description="Run the node agent: capture, tunnel and policy for this node's pods.",
    )
    p.add_argument("--node", required=True, help="the name of the node this agent serves")
    add_source_flags(p, "where cluster objects come from")
    p.add_argument(
        "--kube-pods",
        choices=["node", "all"],
        default="all",
        help="with --source kube: reflect every pod (default: an endpoint's identity is its"
        " pod's service account), or this node's only (endpoints on other nodes are then"
        " not used: their identity is unknown)",
    )
    p.add_argument(
        "--admin",
        default=f"127.0.0.1:{ADMIN_PORT}",
        metavar="ADDR",
        help="admin endpoint, /config_dump and /logging (default %(default)s)",
    )
    p.add_argument(
        "--ready",
        default=f"0.0.0.0:{READY_PORT}",
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
        "--cni-socket",
        default="",
        metavar="PATH",
        help=f"serve slipstream-cni on this UNIX socket (a node's: {CNI_SOCKET}; default: none,"
        " pods' namespaces come from their slipstream.dev/netns annotation)",
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

    d = sub.add_parser(
        "drain",
        parents=parents,
        help="drain the node agent before it stops (the DaemonSet's preStop hook)",
        description="Tell the node agent it is about to be stopped: it turns unready and refuses"
        " new pods' CNI ADD (they wait for the next agent rather than start uncaptured), while"
        " its pods keep their capture. Waits until the agent's proxied connections have"
        " closed, or --wait has passed; never fails (a preStop hook must not hold the pod).",
    )
    d.add_argument(
        "--admin",
        default=f"127.0.0.1:{ADMIN_PORT}",
        metavar="ADDR",
        help="the agent's admin endpoint (default %(default)s)",
    )
    d.add_argument(
        "--wait",
        default="20s",
        help="at most this long for open connections to close (default %(default)s; keep it"
        " under terminationGracePeriodSeconds minus the agent's own drain)",
    )
    d.set_defaults(func=_drain)


def _drain(args: argparse.Namespace) -> int:
    host, port = parse_address(args.admin, "127.0.0.1")
    url = f"http://{host}:{port}/drain"
    deadline = time.monotonic() + parse_duration(args.wait)
    method = "POST"
    while True:
        try:
            req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
            with urllib.request.urlopen(req, timeout=5) as r:
                status = json.load(r)
        except (OSError, ValueError) as exc:
            print(f"drain: the agent at {host}:{port} did not answer ({exc}); nothing to wait for")
            return 0
        method = "GET"
        left = deadline - time.monotonic()
        if status.get("connections", 0) == 0 or left <= 0:
            print(f"drain: draining; {status.get('connections', 0)} connections still open")
            return 0
        time.sleep(min(0.5, left))


def _run_agent(args: argparse.Namespace) -> int:
    main(
        AgentConfig(
            node=args.node,
            source=args.source,
            kubeconfig=args.kubeconfig,
            kube_all_pods=args.kube_pods == "all",
            admin_addr=parse_address(args.admin, "127.0.0.1", listen=True),
            ready_addr=parse_address(args.ready, "0.0.0.0", listen=True),
            state_dir=args.state_dir,
            netns_dir=args.netns_dir,
            cni_socket=args.cni_socket,
            capture=args.capture,
            cleanup=args.cleanup,
            ca=args.ca,
            ca_root=args.ca_root,
            ca_token_file=args.ca_token_file,
            trust_domain=args.trust_domain,
            root_namespace=args.root_namespace,
            cert_ttl=parse_timedelta(args.cert_ttl),
            bundle_refresh=parse_duration(args.bundle_refresh),
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

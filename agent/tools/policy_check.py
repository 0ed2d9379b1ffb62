"""`slipstream policy check`: what the destination agent would decide for a connection, and why.

It reads the same objects the agents read (a lab's, from its API server, or manifests given with
-f) through the same code (`ManifestSet`), runs the agents' own evaluation, and
names the policy and rule that decided. A refused policy decides as it does on
the agents: manifests given with -f are read in order, a later definition of an
object being an update of an earlier one, so an invalid update keeps the last
good version; one with no good version fails closed ("denied: policy shop/x is
invalid: field: reason"). Reading a lab, the last good version of a refused
policy is asked of the destination's agent, which holds it. Plaintext refused
by a STRICT PeerAuthentication is denied before policy is asked, as on the
agents. Exit status: 0 allowed, 3 denied, 1 the question could not be asked (no
such pod, bad syntax), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from agent.common.constants import ADMIN_PORT, DEFAULT_TRUST_DOMAIN
from agent.common.errors import FieldError, SlipstreamError
from agent.common.manifest import Document, load_paths
from agent.lab import Lab, resolve
from agent.policy.authz import Authorizer, Decision, PolicyPeer
from agent.policy.peerauth import ROOT_NAMESPACE, STRICT, mode_for, plaintext_refusal
from agent.sources.manifest_set import ManifestSet
from agent.state import Snapshot, parse_object
from agent.state.authz import AuthorizationPolicy
from agent.state.objects import ObjectKey, Pod, Resource

UNKNOWN_IP = "0.0.0.0"
DENIED_STATUS = 3


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    policy = sub.add_parser("policy", parents=parents, help="inspect authorization policy")
    cmds = policy.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    p = cmds.add_parser(
        "check",
        parents=parents,
        help="would a connection be allowed, and by which policy and rule",
        description="Evaluate AuthorizationPolicies as the destination's agent does.",
        epilog="exit status: 0 allowed, 3 denied, 1 error",
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="NS/POD|NS/SA",
        help="the client: a pod (its service account and IP), else a service account",
    )
    p.add_argument("--to", dest="dest", required=True, metavar="NS/POD:PORT")
    p.add_argument(
        "--plaintext",
        action="store_true",
        help="the client is outside the mesh: it has an IP but no identity",
    )
    p.add_argument("--from-ip", metavar="IP", help="the client's IP (default: the pod's)")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "-f",
        "--filename",
        action="append",
        metavar="PATH",
        help="manifests (files or directories) to read instead of a lab",
    )
    where.add_argument(
        "--name", help="the lab to read (default: $SLIPSTREAM_LAB, or the only lab that is up)"
    )
    p.add_argument("--root-namespace", default=ROOT_NAMESPACE, metavar="NS")
    p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_check)


@dataclass
class Check:
    source: str
    principal: str | None
    source_ip: str
    destination: str
    port: int
    decision: Decision
    applicable: list[str]
    rejected: list[str]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "principal": self.principal,
            "sourceIP": self.source_ip,
            "to": f"{self.destination}:{self.port}",
            **self.decision.as_dict(),
            "applicablePolicies": self.applicable,
            "rejectedObjects": self.rejected,
            "notes": self.notes,
        }

    def text(self) -> str:
        d = self.decision
        who = self.principal or "no identity (plaintext)"
        lines = [
            f"{'ALLOW' if d.allow else 'DENY'}  {self.source} ({who}, {self.source_ip})"
            f" -> {self.destination}:{self.port}",
            f"  {d.reason}",
        ]
        if d.audit:
            lines.append(f"  audited by: {', '.join(d.audit)}")
        if d.dry_run is not None:
            lines.append(f"  with dry-run policies enforced: {d.dry_run.reason}")
        lines.append(
            f"  policies that apply to {self.destination}: {', '.join(self.applicable) or 'none'}"
        )
        lines += [f"  refused: {r}" for r in self.rejected]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def split_ref(text: str, what: str) -> tuple[str, str]:
    ns, sep, name = text.partition("/")
    if not sep or not ns or not name or "/" in name:
        raise SlipstreamError(f"{what} {text!r}: expected NAMESPACE/NAME")
    return ns, name


def check(
    objects: list[Resource],
    source: str,
    dest: str,
    *,
    plaintext: bool = False,
    source_ip: str | None = None,
    root_namespace: str = ROOT_NAMESPACE,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    rejected: list[str] | None = None,
) -> Check:
    snap = Snapshot.build(1, {o.key: o for o in objects})
    target, sep, port_text = dest.rpartition(":")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise SlipstreamError(f"--to {dest!r}: expected NAMESPACE/POD:PORT")
    dst_ns, dst_name = split_ref(target, "--to")
    dst = snap.get(ObjectKey("Pod", dst_ns, dst_name))
    if not isinstance(dst, Pod):
        raise SlipstreamError(f"--to: no pod {dst_ns}/{dst_name} (its labels pick the policies)")
    src_ns, src_name = split_ref(source, "--from")
    src = snap.get(ObjectKey("Pod", src_ns, src_name))
    sa = src.service_account if isinstance(src, Pod) else src_name
    ip = source_ip or (src.ip if isinstance(src, Pod) and src.ip else UNKNOWN_IP)
    principal = None if plaintext else f"{trust_domain}/ns/{src_ns}/sa/{sa}"
    authz = Authorizer(root_namespace)
    authz.refresh(snap)
    if plaintext and mode_for(snap, dst, dst_ns, root_namespace) == STRICT:
        decision = Decision(False, None, None, plaintext_refusal(dst_ns))
    else:
        peer = PolicyPeer(ip, principal, dst.ip or UNKNOWN_IP, int(port_text))
        decision = authz.decide(snap, dst, peer)
    applicable = [f"{p.ref} ({_what(p)})" for p in authz.applicable(dst)]
    return Check(
        f"{src_ns}/{src_name}",
        principal,
        ip,
        f"{dst_ns}/{dst_name}",
        int(port_text),
        decision,
        applicable,
        rejected or [],
    )


def _what(p: AuthorizationPolicy) -> str:
    if p.fail_closed:
        return "refused, fails closed"
    if p.refused is not None:
        return f"{p.action}, last good version; newest refused"
    return p.action + (", dry run" if p.dry_run else "")


def read_objects(paths: list[str]) -> tuple[list[Resource], list[str]]:
    """What the agents would hold after reading `paths` in order, and the errors of the
    documents they refuse (as the file source reads a directory)."""
    return read_documents(load_paths(paths))


def read_documents(docs: Iterable[Document]) -> tuple[list[Resource], list[str]]:
    """The same, for documents from anywhere (a lab's API: one per object)."""
    mset = ManifestSet()
    files: dict[str, list[Document]] = {}
    order: list[str] = []
    for doc in docs:
        if doc.source not in files:
            files[doc.source] = []
            order.append(doc.source)
        files[doc.source].append(doc)
    for source in order:
        mset.update_file(source, files[source])
    return list(mset.all_objects()), [str(e) for e in mset.errors()]


def with_agents_last_good(
    objects: list[Resource], lab: Lab, dest: str
) -> tuple[list[Resource], list[str]]:
    """Replace the fail-closed stand-ins of refused policies with the last good versions
    the destination's agent holds (the objects directory has only the refused version)."""
    if not any(isinstance(o, AuthorizationPolicy) and o.fail_closed for o in objects):
        return objects, []
    ns, _, rest = dest.partition("/")
    key = ObjectKey("Pod", ns, rest.rpartition(":")[0])
    pod = next((o for o in objects if isinstance(o, Pod) and o.key == key), None)
    if pod is None or not pod.node_name:
        return objects, []
    held: list[dict[str, Any]] | None = None
    try:
        status, body = lab.node_http(pod.node_name, f"http://127.0.0.1:{ADMIN_PORT}/config_dump")
        problem = f"HTTP {status}"
        if status == 200:
            held = json.loads(body)["authorizationPolicies"]
    except (OSError, ValueError, KeyError, SlipstreamError) as exc:
        problem = str(exc)
    if held is None:
        return objects, [
            f"node {pod.node_name}'s agent did not answer ({problem}): a refused policy is shown"
            " failing closed, though that agent may hold a last good version"
        ]
    last_good = {e["name"]: e["lastGood"] for e in held if "lastGood" in e}
    out: list[Resource] = []
    for o in objects:
        if isinstance(o, AuthorizationPolicy) and o.fail_closed and o.ref in last_good:
            try:
                good = parse_object(last_good[o.ref])
            except FieldError:
                good = None
            if isinstance(good, AuthorizationPolicy):
                out.append(replace(good, refused=o.refused))
                continue
        out.append(o)
    return out, []


def cmd_check(args: argparse.Namespace) -> int:
    lab = None
    if args.filename:
        objects, rejected = read_objects(args.filename)
    else:
        lab = resolve(args)
        objects, rejected = read_documents(lab.documents())
    notes: list[str] = []
    if lab is not None:
        objects, notes = with_agents_last_good(objects, lab, args.dest)
    result = check(
        objects,
        args.source,
        args.dest,
        plaintext=args.plaintext,
        source_ip=args.from_ip,
        root_namespace=args.root_namespace,
        trust_domain=args.trust_domain,
        rejected=rejected,
    )
    result.notes += notes
    if args.output == "json":
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(result.text())
    return 0 if result.decision.allow else DENIED_STATUS

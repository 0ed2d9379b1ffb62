"""The lab's bookkeeping, without I/O: names, addresses, placement, saved state.

Addressing (all of it exists only inside the lab's namespaces):
  node i (1-based)      172.30.0.i on the lab bridge
  pods on node i        10.244.i.2 - 10.244.i.254, gateway 10.244.i.1 (the node)
  Services              10.96.0.10 - 10.96.255.254

Namespace names use `_` as separator, which no Kubernetes name may contain, so
two labs can never produce the same name: `ss_<lab>_node_<node>`,
`ss_<lab>_pod_<namespace>_<pod>`, `ss_<lab>_bridge`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator

from agent.common import constants
from agent.common.errors import FieldError
from agent.common.schema import Bool, Model, Str, from_unit, invalid, parse
from agent.common.units import parse_duration
from agent.state.enrollment import ANNOTATION_NETNS
from agent.state.objects import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    MESH_API,
    ObjectKey,
    Service,
    parse_meta,
    parse_object,
    selects,
)

LAB_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,22}[a-z0-9])?$")
NETNS_PREFIX = "ss_"
NODE_NET = ipaddress.ip_network("172.30.0.0/24")
POD_NET = ipaddress.ip_network("10.244.0.0/16")
MAX_NODES = 200
FIRST_SERVICE_IP = int(ipaddress.ip_address("10.96.0.10"))


SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")
"""The lab's service range (its API server allocates from the same)."""
FIELD_REFS = frozenset(
    {
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "spec.serviceAccountName",
        "status.podIP",
        "status.hostIP",
    }
)
"""The Downward API fields the lab fills into a container's env."""


@dataclass(frozen=True)
class LabSpec:
    """The `Lab` object of a manifest (apiVersion slipstream.dev/v1alpha1)."""

    name: str
    nodes: tuple[str, ...]
    mesh: bool = True
    """Start the mesh (agents) on the nodes; off for a bare cluster."""
    capture: str = "ebpf"
    """The agents' capture: ebpf, or iptables (the pre-eBPF baseline, for benchmarks)."""
    certificate_ttl: str = "24h"
    """Life of workload certificates (short in tests, to see renewals)."""
    trust_domain: str = constants.DEFAULT_TRUST_DOMAIN
    bundle_refresh: str = "10s"
    """How often agents fetch the trust bundle from the CA."""
    agent_args: tuple[str, ...] = ()
    """More flags for every agent (`spec.mesh.agentArgs`), e.g. its HBONE limits."""
    source: str = "kube"
    """Where the components read the cluster (`spec.mesh.source`): the lab's API server
    (`kube`, as on a real cluster), or the manifest directory the lab writes from it
    (`file`, the small installs' source; tests that put objects past the API's
    validation use it)."""
    pod_network: str = "lab"
    """How pods get their network (`spec.podNetwork`): `lab`, veths the lab makes itself
    and a `slipstream.dev/netns` annotation the agents read; or `cni`, the reference CNI
    plugins as each node's primary CNI with slipstream-cni chained by the install step,
    run as a container runtime runs them (agent/lab/cnirun.py)."""


def _node_name(name: str) -> str:
    if not DNS_LABEL.match(name):
        raise ValueError(f"{name!r} is not a valid node name")
    return name


def _duration_text(value: Any) -> str:
    """A duration, checked by the one parser and kept as written (agents get it as a flag)."""
    parse_duration(value if isinstance(value, str | int | float) else repr(value))
    return str(value)


def _trust_domain(value: str) -> str:
    if not DNS_SUBDOMAIN.match(value):
        raise ValueError(f"{value!r} is not a trust domain")
    return value


DurationText = Annotated[str, BeforeValidator(from_unit(_duration_text))]


class LabMesh(Model):
    """`spec.mesh` of a Lab."""

    enabled: Bool = True
    capture: Literal["ebpf", "iptables"] = "ebpf"
    certificate_ttl: DurationText = Field("24h", alias="certificateTTL")
    trust_domain: Annotated[Str, AfterValidator(_trust_domain)] = constants.DEFAULT_TRUST_DOMAIN
    bundle_refresh: DurationText = "10s"
    agent_args: tuple[Str, ...] = ()
    source: Literal["kube", "file"] = "kube"


class LabBody(Model):
    """`spec` of a Lab: the nodes, and the mesh on them."""

    nodes: tuple[Annotated[Str, AfterValidator(_node_name)], ...]
    mesh: LabMesh = LabMesh.model_validate({})
    pod_network: Literal["lab", "cni"] = "lab"

    @field_validator("nodes")
    @classmethod
    def _nodes(cls, nodes: tuple[str, ...]) -> tuple[str, ...]:
        if not nodes:
            raise ValueError("must be a non-empty list of node names")
        if len(nodes) > MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes")
        for i, n in enumerate(nodes):
            if nodes.index(n) != i:
                raise invalid(f"node {n!r} is listed twice", i)
        return nodes


def parse_lab_spec(body: Mapping[str, Any]) -> LabSpec:
    if body.get("apiVersion") != MESH_API:
        raise FieldError("apiVersion", f"a Lab must have apiVersion {MESH_API}")
    meta = parse_meta(body, "Lab")
    lab = parse(LabBody, body.get("spec"), "spec")
    m = lab.mesh
    return LabSpec(
        meta.name,
        lab.nodes,
        m.enabled,
        m.capture,
        m.certificate_ttl,
        m.trust_domain,
        m.bundle_refresh,
        m.agent_args,
        m.source,
        lab.pod_network,
    )


def check_lab_name(name: str) -> str:
    if not LAB_NAME.match(name):
        raise FieldError(
            "--name", f"{name!r} is not a lab name (lowercase letters, digits, '-', at most 24)"
        )
    return name


# ------------------------------------------------------------------ names


def _fit(name: str) -> str:
    # /run/netns entries are file names; keep them well under NAME_MAX.
    if len(name) <= 200:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{name[:180]}_{digest}"


def bridge_netns(lab: str) -> str:
    return f"{NETNS_PREFIX}{lab}_bridge"


def control_plane_netns(lab: str) -> str:
    """Where the CA (and later other control-plane processes) run, on the lab bridge."""
    return f"{NETNS_PREFIX}{lab}_cp"


CONTROL_PLANE_INDEX = 250
"""The control plane's host number on the bridge: 172.30.0.250."""
CA_PORT = constants.CA_PORT
MESH_CREDENTIALS = "slipstream.dev/mesh-credentials"
"""Pod annotation: "true" hands the pod what a mesh client needs (the gateway): the CA's
address and roots, a credential of its own that gets only its own SPIFFE ID, that ID,
and the manifest source."""


CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN",
    "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE",
    "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
    "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)  # fmt: skip
"""Linux capabilities by number (linux/capability.h), as Kubernetes names them."""
DEFAULT_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)  # fmt: skip
"""What a container gets when its securityContext says nothing: containerd's and Docker's
default set (root in a container, without SYS_ADMIN, NET_ADMIN, SYS_PTRACE...)."""


def _capability(raw: str) -> str:
    name = raw.upper().removeprefix("CAP_")
    if name != "ALL" and name not in CAPABILITIES:
        raise ValueError(f"{raw!r} is not a Linux capability")
    return name


class LabCapabilities(Model):
    add: tuple[Annotated[Str, AfterValidator(_capability)], ...] = ()
    drop: tuple[Annotated[Str, AfterValidator(_capability)], ...] = ()


class LabSecurityContext(Model):
    """A container's `securityContext` as the lab runs it. Stricter than the agent's view
    (agent/state/objects.py reads only what the mesh needs and ignores the rest): a field
    the lab cannot honour is refused, never ignored (a manifest asking for `runAsNonRoot`
    must not run as root silently)."""

    privileged: Bool = False
    allow_privilege_escalation: Bool = False
    capabilities: LabCapabilities = LabCapabilities()


def container_capabilities(container: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """The capabilities a container runs with, from `securityContext` as containerd reads
    it: the default set; `privileged: true` or `capabilities.add: [ALL]` gives all, `drop:
    [ALL]` none; then the named ones are added, then the named ones dropped. Names may carry
    the `CAP_` prefix."""
    if container.get("securityContext") is None:
        return DEFAULT_CAPABILITIES
    try:
        sc = parse(LabSecurityContext, container["securityContext"], f"{where}.securityContext")
    except FieldError as exc:
        if exc.reason != "unknown field":
            raise
        raise FieldError(
            exc.field,
            "is not implemented by the lab (it honours privileged, capabilities and "
            "allowPrivilegeEscalation; pods run as root)",
        ) from exc
    add, drop = sc.capabilities.add, sc.capabilities.drop
    result = set(CAPABILITIES) if sc.privileged or "ALL" in add else set(DEFAULT_CAPABILITIES)
    if "ALL" in drop:
        result = set()
    result |= {n for n in add if n != "ALL"}
    result -= set(drop)
    return tuple(n for n in CAPABILITIES if n in result)


def ca_address() -> str:
    return f"{node_ip(CONTROL_PLANE_INDEX)}:{CA_PORT}"


def node_netns(lab: str, node: str) -> str:
    return f"{NETNS_PREFIX}{lab}_node_{node}"


def pod_netns(lab: str, namespace: str, pod: str) -> str:
    return _fit(f"{NETNS_PREFIX}{lab}_pod_{namespace}_{pod}")


def lab_prefix(lab: str) -> str:
    return f"{NETNS_PREFIX}{lab}_"


def host_veth(namespace: str, pod: str) -> str:
    """The node-side end of a pod's veth: unique per node, at most 15 characters."""
    return "vp" + hashlib.sha256(f"{namespace}/{pod}".encode()).hexdigest()[:11]


# ------------------------------------------------------------------ addresses


def node_ip(index: int) -> str:
    return str(NODE_NET.network_address + index)


def pod_cidr(index: int) -> str:
    return f"10.244.{index}.0/24"


def pod_gateway(index: int) -> str:
    return f"10.244.{index}.1"


def pod_ip(node_index: int, host: int) -> str:
    return f"10.244.{node_index}.{host}"


def free_pod_host(used: set[str], node_index: int) -> int | None:
    for host in range(2, 255):
        if pod_ip(node_index, host) not in used:
            return host
    return None


def free_service_ip(used: set[str]) -> str | None:
    last = int(SERVICE_CIDR.broadcast_address)
    for n in range(FIRST_SERVICE_IP, last):
        ip = str(ipaddress.IPv4Address(n))
        if ip not in used:
            return ip
    return None


# ------------------------------------------------------------------ saved state


@dataclass
class NodeRecord:
    name: str
    index: int
    netns: str
    ip: str
    pod_cidr: str


@dataclass
class PodRecord:
    namespace: str
    name: str
    node: str
    ip: str
    netns: str
    veth: str
    dir: str
    """Where the pod's supervisor keeps its spec, status and container logs."""
    created: float
    uid: str = ""
    """The API object's uid: a pod deleted and created again under its name is a new pod."""
    host_network: bool = False
    """`spec.hostNetwork`: the pod runs in its node's namespace (`netns` is the node's)."""


@dataclass
class ProcessRecord:
    """A mesh process the lab started (agent, CA, waypoint, gateway)."""

    kind: str
    name: str
    netns: str
    pid: int
    starttime: int
    """From /proc/<pid>/stat, so a recycled pid is never taken for ours."""
    argv: list[str]
    log: str


@dataclass
class LabState:
    name: str
    spec: LabSpec
    created: float
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    pods: dict[str, PodRecord] = field(default_factory=dict)
    """Key "namespace/name"."""
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Every object as the user gave it, by `str(ObjectKey)`."""
    live: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Fields the lab fills in (pod IP, node, cluster IP), by `str(ObjectKey)`."""
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    """Key "kind/name", e.g. "agent/node-a"."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LabState:
        d = json.loads(text)
        spec = d["spec"]
        return cls(
            name=d["name"],
            spec=LabSpec(
                **{
                    **spec,
                    "nodes": tuple(spec["nodes"]),
                    "agent_args": tuple(spec.get("agent_args", ())),
                }
            ),
            created=d["created"],
            nodes={k: NodeRecord(**v) for k, v in d["nodes"].items()},
            pods={k: PodRecord(**v) for k, v in d["pods"].items()},
            manifests=d["manifests"],
            live=d["live"],
            processes={k: ProcessRecord(**v) for k, v in d["processes"].items()},
        )

    def used_pod_ips(self) -> set[str]:
        return {p.ip for p in self.pods.values()}

    def used_service_ips(self) -> set[str]:
        return {v["clusterIP"] for v in self.live.values() if v.get("clusterIP")}

    def choose_node(self) -> NodeRecord:
        """Spread: the node with the fewest pods, first in spec order on a tie."""
        counts = {n: 0 for n in self.nodes}
        for p in self.pods.values():
            counts[p.node] = counts.get(p.node, 0) + 1
        best = min(self.spec.nodes, key=lambda n: (counts.get(n, 0), self.spec.nodes.index(n)))
        return self.nodes[best]

    def object_keys(self, kind: str | None = None) -> list[ObjectKey]:
        out = []
        for body in self.manifests.values():
            meta = body.get("metadata", {})
            key = ObjectKey.parse(
                body["kind"],
                meta["name"],
                meta.get("namespace", "default"),
                str(body.get("apiVersion", "")),
            )
            if kind is None or key.kind == kind:
                out.append(key)
        return sorted(out)

    def object(self, key: ObjectKey) -> dict[str, Any] | None:
        """The object as the mesh sees it: the manifest plus the lab's live fields."""
        body = self.manifests.get(str(key))
        if body is None:
            return None
        return with_live_fields(body, self.live.get(str(key), {}))


def with_live_fields(body: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(body))
    meta = out.setdefault("metadata", {})
    if out.get("kind") != "Namespace" and out.get("kind") not in ("Lab",):
        meta.setdefault("namespace", "default")
    if "creationTimestamp" in live:
        meta["creationTimestamp"] = live["creationTimestamp"]
    if out.get("kind") == "Pod":
        if live.get("netns"):
            meta.setdefault("annotations", {})[ANNOTATION_NETNS] = live["netns"]
        spec = out.setdefault("spec", {})
        if live.get("nodeName"):
            spec["nodeName"] = live["nodeName"]
        status = out.setdefault("status", {})
        for k in ("phase", "podIP", "hostIP"):
            if live.get(k):
                status[k] = live[k]
        if live.get("podIP"):
            status["podIPs"] = [{"ip": live["podIP"]}]
    elif out.get("kind") == "Service" and live.get("clusterIP"):
        spec = out.setdefault("spec", {})
        spec["clusterIP"] = live["clusterIP"]
        spec["clusterIPs"] = [live["clusterIP"]]
    return out


def pod_phase(status: Mapping[str, Any] | None, supervisor_alive: bool) -> dict[str, Any]:
    """A pod's phase and container summary from its supervisor's status file."""
    if not status:
        return {
            "phase": "Pending",
            "ready": 0,
            "total": 0,
            "restarts": 0,
            "reason": "",
            "containers": [],
        }
    containers = list(status.get("containers", []))
    running = sum(1 for c in containers if c.get("state") == "running")
    restarts = sum(int(c.get("restarts", 0)) for c in containers)
    reason = status.get("error", "")
    if reason:
        phase = "Failed"
    elif containers and all(c.get("state") == "terminated" for c in containers):
        phase = "Succeeded" if all(c.get("exit_code") == 0 for c in containers) else "Failed"
    elif not supervisor_alive:
        phase, reason = "Failed", "the pod's supervisor is gone"
    else:
        phase = "Running"
        waiting = [c.get("reason", "") for c in containers if c.get("state") == "waiting"]
        reason = next((r for r in waiting if r), "")
    return {
        "phase": phase,
        "ready": running,
        "total": len(containers),
        "restarts": restarts,
        "reason": reason,
        "containers": containers,
    }


def hosts_file(state: LabState, pod: PodRecord) -> str:
    """/etc/hosts for one pod: the lab's stand-in for cluster DNS.

    Services resolve as `<svc>.<ns>.svc.cluster.local`, `<svc>.<ns>.svc`,
    `<svc>.<ns>` and, within the pod's own namespace, `<svc>`: to the cluster
    IP, or to the ready pod IPs for a headless Service (clusterIP: None).
    """
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{pod.ip}\t{pod.name}",
    ]
    pods = [
        (p, state.manifests.get(str(ObjectKey("Pod", p.namespace, p.name)), {}))
        for p in state.pods.values()
    ]
    for key in state.object_keys("Service"):
        body = state.object(key)
        try:
            svc = parse_object(body)
        except FieldError:
            continue
        if not isinstance(svc, Service):
            continue
        ns, name = key.namespace, key.name
        names = [f"{name}.{ns}.svc.cluster.local", f"{name}.{ns}.svc", f"{name}.{ns}"]
        if ns == pod.namespace:
            names.append(name)
        if svc.cluster_ip == "None":
            ips = [
                p.ip
                for p, m in pods
                if p.namespace == ns
                and selects(svc.selector, (m.get("metadata") or {}).get("labels") or {})
            ]
        else:
            ips = [svc.cluster_ip] if svc.cluster_ip else []
        lines += [f"{ip}\t{' '.join(names)}" for ip in sorted(ips)]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LabDirs:
    """Where one lab keeps its files (under /run, so a reboot takes them with the namespaces)."""

    dir: str

    @property
    def state(self) -> str:
        return f"{self.dir}/state.json"

    @property
    def objects(self) -> str:
        """The manifests the components read with the file source (`LabSpec.source`),
        written by the lab from its API server."""
        return f"{self.dir}/objects"

    @property
    def logs(self) -> str:
        return f"{self.dir}/logs"

    @property
    def pods(self) -> str:
        return f"{self.dir}/pods"

    @property
    def ca(self) -> str:
        return f"{self.dir}/ca"

    @property
    def bundle(self) -> str:
        """The trust bundle agents and mesh-credential pods start with (later ones come
        from the CA itself)."""
        return f"{self.ca}/bundle.pem"

    @property
    def credentials(self) -> str:
        """The CA's credentials file (digests only: the tokens go to their holders)."""
        return f"{self.ca}/credentials.json"

    def agent(self, node: str) -> str:
        """An agent's state directory and credentials."""
        return f"{self.dir}/agents/{node}"

    def cni(self, node: str) -> str:
        """A node's CNI directories (`podNetwork: cni`): bin, net.d, the IPAM's store, the
        install step's state and the agent's CNI socket."""
        return f"{self.dir}/cni/{node}"

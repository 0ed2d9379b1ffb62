"""Per-kind rules applied on create and update: defaults and the checks Go code does for real.

What kube-apiserver's strategies and validation do that the schemas cannot
say, as far as the kinds served here need it: names (DNS label, subdomain or
DNS-1035 per kind), labels and annotations, pod defaults and the immutability
of a pod's spec, Service cluster IPs (allocated from the service CIDR, fixed
once set), Secret `stringData`, Namespace phase and the
`kubernetes.io/metadata.name` label, and CRD definitions (names, one storage
version, structural schemas). A few rules are deliberately relaxed for the
lab: containers need no `image` (lab pods run commands, not images).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from typing import Any

from . import errors as E
from . import names
from .model import ResourceType
from .schema import structural_problems

MAX_ANNOTATIONS = 256 * 1024

NAME_RULES = {
    "namespaces": names.dns1123_label,
    "services": names.dns1035_label,
    "customresourcedefinitions.apiextensions.k8s.io": names.dns1123_subdomain,
    "roles.rbac.authorization.k8s.io": names.path_segment,
    "rolebindings.rbac.authorization.k8s.io": names.path_segment,
    "clusterroles.rbac.authorization.k8s.io": names.path_segment,
    "clusterrolebindings.rbac.authorization.k8s.io": names.path_segment,
}


def check_metadata(rt: ResourceType, obj: dict[str, Any], causes: list[E.Cause]) -> None:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        causes.append(E.required("metadata"))
        return
    name = meta.get("name")
    if not name:
        causes.append(E.required("metadata.name", "name or generateName is required"))
    elif isinstance(name, str):
        rule = NAME_RULES.get(
            rt.store_key, names.dns1123_subdomain if rt.crd is None else names.path_segment
        )
        problem = rule(name)
        if rt.crd is not None and problem is None and rt.crd.crd_name:
            problem = names.dns1123_subdomain(name)
        if problem:
            causes.append(E.invalid_value("metadata.name", name, problem))
    labels = meta.get("labels")
    if isinstance(labels, dict):
        for k, v in labels.items():
            problem = names.qualified_name_problem(k)
            if problem:
                causes.append(E.invalid_value("metadata.labels", k, problem))
            elif not isinstance(v, str) or names.label_value_problem(v):
                causes.append(
                    E.invalid_value(
                        "metadata.labels",
                        v,
                        names.label_value_problem(str(v)) or "must be a string",
                    )
                )
    annotations = meta.get("annotations")
    if isinstance(annotations, dict):
        total = 0
        for k, v in annotations.items():
            problem = names.qualified_name_problem(k)
            if problem:
                causes.append(E.invalid_value("metadata.annotations", k, problem))
            total += len(k) + len(str(v))
        if total > MAX_ANNOTATIONS:
            causes.append(
                E.Cause(
                    E.TOO_LONG,
                    f"Too long: may not be more than {MAX_ANNOTATIONS} bytes",
                    "metadata.annotations",
                )
            )
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        if not isinstance(ref, dict):
            continue
        for f in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(f):
                causes.append(E.required(f"metadata.ownerReferences[{i}].{f}"))
    fins = meta.get("finalizers") or []
    for i, f in enumerate(fins):
        if isinstance(f, str) and names.qualified_name_problem(f):
            causes.append(
                E.invalid_value(
                    f"metadata.finalizers[{i}]", f, names.qualified_name_problem(f) or ""
                )
            )


# ------------------------------------------------------------------ defaults


def default(rt: ResourceType, obj: dict[str, Any]) -> None:
    """Fill what the real server's defaulters fill (the fields clients rely on)."""
    fn = _DEFAULTERS.get(rt.store_key)
    if fn is not None:
        fn(obj)


def _pod_defaults(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    if not spec.get("serviceAccountName"):
        spec["serviceAccountName"] = spec.get("serviceAccount") or "default"
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if not isinstance(c, dict):
                continue
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("imagePullPolicy", "IfNotPresent")
            c.setdefault("resources", {})
            for p in c.get("ports") or []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault("priority", 0)


def _service_defaults(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    for p in spec.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")
            if "targetPort" not in p and "port" in p:
                p["targetPort"] = p["port"]


def _namespace_defaults(obj: dict[str, Any]) -> None:
    meta = obj.setdefault("metadata", {})
    if isinstance(meta, dict) and isinstance(meta.get("name"), str):
        labels: dict[str, Any] = meta["labels"] if isinstance(meta.get("labels"), dict) else {}
        meta["labels"] = {**labels, "kubernetes.io/metadata.name": meta["name"]}
    obj.setdefault("spec", {"finalizers": ["kubernetes"]})
    status: dict[str, Any] = obj["status"] if isinstance(obj.get("status"), dict) else {}
    obj["status"] = {**status, "phase": status.get("phase") or "Active"}


def _secret_defaults(obj: dict[str, Any]) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict):
        data: dict[str, Any] = obj["data"] if isinstance(obj.get("data"), dict) else {}
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        obj["data"] = data


def _template_defaults(spec: dict[str, Any]) -> None:
    template = spec.get("template")
    if isinstance(template, dict):
        template.setdefault("metadata", {})
        _pod_defaults(template)


def _rolling_update(spec: dict[str, Any], field: str, max_unavailable: Any, max_surge: Any) -> None:
    """`spec.<field>`: RollingUpdate unless said otherwise, with these limits by default."""
    strategy = spec.setdefault(field, {})
    if isinstance(strategy, dict):
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            if isinstance(rolling, dict):
                rolling.setdefault("maxUnavailable", max_unavailable)
                rolling.setdefault("maxSurge", max_surge)


def _daemonset_defaults(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    _rolling_update(spec, "updateStrategy", 1, 0)
    spec.setdefault("revisionHistoryLimit", 10)
    _template_defaults(spec)


def _deployment_defaults(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("replicas", 1)
    _rolling_update(spec, "strategy", "25%", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    _template_defaults(spec)


def _replicaset_defaults(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    if isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        _template_defaults(spec)


_DEFAULTERS = {
    "daemonsets.apps": _daemonset_defaults,
    "deployments.apps": _deployment_defaults,
    "replicasets.apps": _replicaset_defaults,
    "pods": _pod_defaults,
    "services": _service_defaults,
    "namespaces": _namespace_defaults,
    "secrets": _secret_defaults,
}


# ------------------------------------------------------------------ kind checks


def check_kind(
    rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None, causes: list[E.Cause]
) -> None:
    fn = _CHECKS.get(rt.store_key)
    if fn is not None:
        fn(obj, old, causes)


def _check_pod(obj: dict[str, Any], old: dict[str, Any] | None, causes: list[E.Cause]) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        causes.append(E.required("spec"))
        return
    containers = spec.get("containers")
    if not containers:
        causes.append(E.required("spec.containers"))
    seen: set[str] = set()
    for key in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(key) or []):
            if not isinstance(c, dict):
                continue
            name = c.get("name")
            path = f"spec.{key}[{i}].name"
            if not name:
                causes.append(E.required(path))
            elif isinstance(name, str):
                problem = names.dns1123_label(name)
                if problem:
                    causes.append(E.invalid_value(path, name, problem))
                elif name in seen:
                    causes.append(E.duplicate(path, name))
                seen.add(name)
            for j, p in enumerate(c.get("ports") or []):
                if isinstance(p, dict):
                    port = p.get("containerPort")
                    if isinstance(port, int) and not 0 < port < 65536:
                        causes.append(
                            E.invalid_value(
                                f"spec.{key}[{i}].ports[{j}].containerPort",
                                port,
                                "must be between 1 and 65535, inclusive",
                            )
                        )
    if old is not None:
        # As the real server: a pod's spec is fixed once created, but for images and a few fields.
        def mutable_view(s: Any) -> Any:
            if not isinstance(s, dict):
                return s
            s = json.loads(json.dumps(s))
            for key in ("containers", "initContainers"):
                for c in s.get(key) or []:
                    if isinstance(c, dict):
                        c.pop("image", None)
            for f in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
                s.pop(f, None)
            return s

        if mutable_view(spec) != mutable_view(old.get("spec")):
            causes.append(
                E.forbidden_field(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,"
                    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
                    "`spec.tolerations` "
                    "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
                    "(allow it to be set to 1 if it was previously negative)",
                )
            )


def _check_service(obj: dict[str, Any], old: dict[str, Any] | None, causes: list[E.Cause]) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        causes.append(E.required("spec"))
        return
    stype = spec.get("type", "ClusterIP")
    if stype not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        causes.append(
            E.not_supported(
                "spec.type", stype, ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]
            )
        )
    ports = spec.get("ports") or []
    if not ports and stype != "ExternalName" and spec.get("clusterIP") != "None":
        causes.append(E.required("spec.ports"))
    seen_names: set[str] = set()
    for i, p in enumerate(ports):
        if not isinstance(p, dict):
            continue
        port = p.get("port")
        if not isinstance(port, int) or not 0 < port < 65536:
            causes.append(
                E.invalid_value(
                    f"spec.ports[{i}].port", port, "must be between 1 and 65535, inclusive"
                )
            )
        tp = p.get("targetPort")
        if isinstance(tp, int) and not 0 < tp < 65536:
            causes.append(
                E.invalid_value(
                    f"spec.ports[{i}].targetPort", tp, "must be between 1 and 65535, inclusive"
                )
            )
        elif isinstance(tp, str) and not tp.isdigit() and names.dns1123_label(tp) is not None:
            causes.append(
                E.invalid_value(
                    f"spec.ports[{i}].targetPort", tp, "must contain at least one letter (a-z)"
                )
            )
        if p.get("protocol") not in ("TCP", "UDP", "SCTP"):
            causes.append(
                E.not_supported(
                    f"spec.ports[{i}].protocol", p.get("protocol"), ["SCTP", "TCP", "UDP"]
                )
            )
        name = p.get("name", "")
        if len(ports) > 1 and not name:
            causes.append(E.required(f"spec.ports[{i}].name"))
        if name in seen_names and name:
            causes.append(E.duplicate(f"spec.ports[{i}].name", name))
        seen_names.add(name)
    if old is not None:
        old_ip = (old.get("spec") or {}).get("clusterIP")
        if old_ip and spec.get("clusterIP") not in (None, old_ip) and stype != "ExternalName":
            causes.append(
                E.invalid_value(
                    "spec.clusterIPs[0]", [spec.get("clusterIP")], "may not change once set"
                )
            )


def _check_secret(obj: dict[str, Any], old: dict[str, Any] | None, causes: list[E.Cause]) -> None:
    data = obj.get("data") or {}
    if isinstance(data, dict):
        for k, v in data.items():
            problem = names.config_key_problem(k)
            if problem:
                causes.append(E.invalid_value(f"data[{k}]", k, problem))
            try:
                base64.b64decode(str(v), validate=True)
            except (binascii.Error, ValueError):
                causes.append(E.invalid_value(f"data[{k}]", "<value>", "illegal base64 data"))


def _check_configmap(
    obj: dict[str, Any], old: dict[str, Any] | None, causes: list[E.Cause]
) -> None:
    for field in ("data", "binaryData"):
        for k in obj.get(field) or {}:
            problem = names.config_key_problem(k)
            if problem:
                causes.append(E.invalid_value(f"{field}[{k}]", k, problem))


def _check_slice(obj: dict[str, Any], old: dict[str, Any] | None, causes: list[E.Cause]) -> None:
    at = obj.get("addressType")
    if at not in ("IPv4", "IPv6", "FQDN"):
        causes.append(E.not_supported("addressType", at, ["FQDN", "IPv4", "IPv6"]))
    if old is not None and old.get("addressType") != at:
        causes.append(E.invalid_value("addressType", at, "field is immutable"))


def _check_crd(obj: dict[str, Any], old: dict[str, Any] | None, causes: list[E.Cause]) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        causes.append(E.required("spec"))
        return
    group, n = spec.get("group"), spec.get("names") or {}
    plural = n.get("plural") if isinstance(n, dict) else None
    if not group:
        causes.append(E.required("spec.group"))
    elif "." not in str(group):
        causes.append(
            E.invalid_value("spec.group", group, "should be a domain with at least one dot")
        )
    if not plural:
        causes.append(E.required("spec.names.plural"))
    if not (isinstance(n, dict) and n.get("kind")):
        causes.append(E.required("spec.names.kind"))
    name = (obj.get("metadata") or {}).get("name")
    if group and plural and name != f"{plural}.{group}":
        causes.append(
            E.invalid_value("metadata.name", name, 'must be spec.names.plural+"."+spec.group')
        )
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(E.not_supported("spec.scope", spec.get("scope"), ["Cluster", "Namespaced"]))
    versions = spec.get("versions") or []
    if not versions:
        causes.append(
            E.required("spec.versions", "must have exactly one version marked as storage version")
        )
    storage = [v for v in versions if isinstance(v, dict) and v.get("storage")]
    if versions and len(storage) != 1:
        causes.append(
            E.invalid_value(
                "spec.versions",
                len(storage),
                "must have exactly one version marked as storage version",
            )
        )
    for i, v in enumerate(versions):
        if not isinstance(v, dict):
            continue
        if not v.get("name"):
            causes.append(E.required(f"spec.versions[{i}].name"))
        schema = (v.get("schema") or {}).get("openAPIV3Schema")
        path = f"spec.versions[{i}].schema.openAPIV3Schema"
        if schema is None:
            causes.append(E.required(path, "schemas are required"))
        else:
            if "$ref" in json.dumps(schema):
                causes.append(E.forbidden_field(path, "$ref is not supported"))
            causes.extend(structural_problems(schema, path))
    if old is not None:
        if (old.get("spec") or {}).get("scope") != spec.get("scope"):
            causes.append(E.invalid_value("spec.scope", spec.get("scope"), "field is immutable"))
        if (old.get("spec") or {}).get("group") != group:
            causes.append(E.invalid_value("spec.group", group, "field is immutable"))


_CHECKS = {
    "pods": _check_pod,
    "services": _check_service,
    "secrets": _check_secret,
    "configmaps": _check_configmap,
    "endpointslices.discovery.k8s.io": _check_slice,
    "customresourcedefinitions.apiextensions.k8s.io": _check_crd,
}


# ------------------------------------------------------------------ cluster IPs


class ClusterIPs:
    """Allocates Services' cluster IPs from the service CIDR, as kube-apiserver's allocator."""

    def __init__(self, cidr: str = "10.96.0.0/16") -> None:
        self.net = ipaddress.ip_network(cidr)
        self.next = int(self.net.network_address) + 2
        """Where the next search starts: the first address is the `kubernetes` Service's."""

    def assign(self, spec: dict[str, Any], used: set[str], causes: list[E.Cause]) -> None:
        if spec.get("type") == "ExternalName":
            return
        ip = spec.get("clusterIP")
        if ip in (None, ""):
            first = int(self.net.network_address) + 2
            last = int(self.net.broadcast_address) - 1
            size = max(last - first + 1, 0)
            for step in range(size):
                cand = first + (self.next - first + step) % size
                text = str(ipaddress.ip_address(cand))
                if text not in used:
                    spec["clusterIP"] = text
                    self.next = cand + 1
                    break
            else:
                causes.append(
                    E.invalid_value("spec.clusterIPs", [], "failed to allocate IP: range is full")
                )
                return
        elif ip != "None":
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                causes.append(
                    E.invalid_value(
                        "spec.clusterIPs[0]",
                        ip,
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    )
                )
                return
            if addr not in self.net:
                causes.append(
                    E.invalid_value(
                        "spec.clusterIPs",
                        [ip],
                        (
                            f"failed to allocate IP {ip}: the provided IP ({ip}) "
                            "is not in the valid range. The range of valid "
                            f"IPs is {self.net}"
                        ),
                    )
                )
                return
            if ip in used:
                causes.append(
                    E.invalid_value(
                        "spec.clusterIPs",
                        [ip],
                        f"failed to allocate IP {ip}: provided IP is already allocated",
                    )
                )
                return
        spec["clusterIPs"] = [spec["clusterIP"]]
        if spec["clusterIP"] != "None" or True:
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")

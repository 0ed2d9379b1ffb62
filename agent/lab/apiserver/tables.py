"""`application/json;as=Table;v=v1;g=meta.k8s.io`: what `kubectl get` prints.

Columns follow kube-apiserver's printers for the kinds served here (pods:
NAME READY STATUS RESTARTS AGE, and IP NODE NOMINATED NODE READINESS GATES
at priority 1 for `-o wide`); custom resources use their CRD's
additionalPrinterColumns; any other kind gets the real server's default
table (Name, Created At).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from .model import PrinterColumn, ResourceType

Row = list[Any]
Printer = tuple[list[PrinterColumn], Callable[[dict[str, Any], float], Row]]


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration: `5s`, `3m20s`, `4h`, `6d`..."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = s // 3600
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 192:
        return f"{h // 24}d{h % 24}h" if h % 24 else f"{h // 24}d"
    if h < 24 * 365 * 2:
        return f"{h // 24}d"
    if h < 24 * 365 * 8:
        y = h // (24 * 365)
        return f"{y}y{(h % (24 * 365)) // 24}d"
    return f"{h // (24 * 365)}y"


def parse_time(ts: Any) -> float | None:
    if not isinstance(ts, str):
        return None
    try:
        return dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def age(obj: dict[str, Any], now: float) -> str:
    t = parse_time((obj.get("metadata") or {}).get("creationTimestamp"))
    return "<unknown>" if t is None else human_duration(now - t)


def _col(
    name: str, type_: str = "string", priority: int = 0, fmt: str = "", desc: str = ""
) -> PrinterColumn:
    return PrinterColumn(name, type_, "", desc or name, fmt, priority)


NAME = _col("Name", fmt="name", desc="Name must be unique within a namespace.")
AGE = _col(
    "Age",
    desc=(
        "CreationTimestamp is a timestamp representing "
        "the server time when this object was created."
    ),
)


def _pod(o: dict[str, Any], now: float) -> Row:
    spec, st, meta = o.get("spec") or {}, o.get("status") or {}, o.get("metadata") or {}
    statuses = st.get("containerStatuses") or []
    ready = sum(1 for c in statuses if isinstance(c, dict) and c.get("ready"))
    restarts = sum(int(c.get("restartCount") or 0) for c in statuses if isinstance(c, dict))
    reason = st.get("reason") or st.get("phase") or "Unknown"
    for c in statuses:
        if not isinstance(c, dict):
            continue
        state = c.get("state") or {}
        if isinstance(state.get("waiting"), dict) and state["waiting"].get("reason"):
            reason = state["waiting"]["reason"]
        elif isinstance(state.get("terminated"), dict) and state["terminated"].get("reason"):
            reason = state["terminated"]["reason"]
    if meta.get("deletionTimestamp"):
        reason = "Terminating"
    gates = spec.get("readinessGates") or []
    return [
        meta.get("name", ""),
        f"{ready}/{len(spec.get('containers') or [])}",
        reason,
        str(restarts),
        age(o, now),
        st.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        st.get("nominatedNodeName") or "<none>",
        f"{len(gates)}/{len(gates)}" if gates else "<none>",
    ]


def _svc(o: dict[str, Any], now: float) -> Row:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    ports = ",".join(
        (f"{p.get('port')}:{p['nodePort']}" if p.get("nodePort") else f"{p.get('port')}")
        + f"/{p.get('protocol', 'TCP')}"
        for p in spec.get("ports") or []
        if isinstance(p, dict)
    )
    ext = (
        ",".join(
            i.get("ip") or i.get("hostname") or ""
            for i in ((st.get("loadBalancer") or {}).get("ingress") or [])
            if isinstance(i, dict)
        )
        or ",".join(spec.get("externalIPs") or [])
        or ("<pending>" if spec.get("type") == "LoadBalancer" else "<none>")
    )
    sel = spec.get("selector") or {}
    return [
        o["metadata"].get("name", ""),
        spec.get("type", "ClusterIP"),
        spec.get("clusterIP") or "<none>",
        ext,
        ports or "<none>",
        age(o, now),
        ",".join(f"{k}={v}" for k, v in sorted(sel.items())) or "<none>",
    ]


def _slice(o: dict[str, Any], now: float) -> Row:
    ports = (
        ",".join(str(p.get("port")) for p in o.get("ports") or [] if isinstance(p, dict))
        or "<unset>"
    )
    addrs = [
        a for e in o.get("endpoints") or [] if isinstance(e, dict) for a in e.get("addresses") or []
    ]
    shown = ",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else "")
    return [
        o["metadata"].get("name", ""),
        o.get("addressType", ""),
        ports,
        shown or "<unset>",
        age(o, now),
    ]


def _endpoints(o: dict[str, Any], now: float) -> Row:
    eps = [
        f"{a.get('ip')}:{p.get('port')}"
        for s in o.get("subsets") or []
        if isinstance(s, dict)
        for a in s.get("addresses") or []
        if isinstance(a, dict)
        for p in s.get("ports") or []
        if isinstance(p, dict)
    ]
    shown = ",".join(eps[:3]) + (f" + {len(eps) - 3} more..." if len(eps) > 3 else "")
    return [o["metadata"].get("name", ""), shown or "<none>", age(o, now)]


def _node(o: dict[str, Any], now: float) -> Row:
    st = o.get("status") or {}
    ready = next(
        (
            c.get("status")
            for c in st.get("conditions") or []
            if isinstance(c, dict) and c.get("type") == "Ready"
        ),
        None,
    )
    status = "Ready" if ready == "True" else "NotReady" if ready else "Unknown"
    if (o.get("spec") or {}).get("unschedulable"):
        status += ",SchedulingDisabled"
    labels = o["metadata"].get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
    info = st.get("nodeInfo") or {}
    addrs = {
        a.get("type"): a.get("address") for a in st.get("addresses") or [] if isinstance(a, dict)
    }
    return [
        o["metadata"].get("name", ""),
        status,
        ",".join(roles) or "<none>",
        age(o, now),
        info.get("kubeletVersion", ""),
        addrs.get("InternalIP") or "<none>",
        addrs.get("ExternalIP") or "<none>",
        info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


def _event(o: dict[str, Any], now: float) -> Row:
    last = parse_time(
        o.get("lastTimestamp") or o.get("eventTime") or o["metadata"].get("creationTimestamp")
    )
    inv = o.get("involvedObject") or {}
    return [
        human_duration(now - last) if last else "<unknown>",
        o.get("type", ""),
        o.get("reason", ""),
        f"{str(inv.get('kind', '')).lower()}/{inv.get('name', '')}",
        o.get("message", ""),
    ]


def _status_of(o: dict[str, Any], *fields: str) -> list[int]:
    st = o.get("status") or {}
    return [int(st.get(f) or 0) for f in fields]


def _selector_text(o: dict[str, Any]) -> str:
    labels = ((o.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


def _daemonset(o: dict[str, Any], now: float) -> Row:
    desired, current, ready, updated, available = _status_of(
        o, "desiredNumberScheduled", "currentNumberScheduled", "numberReady",
        "updatedNumberScheduled", "numberAvailable",
    )  # fmt: skip
    node_selector = ((o.get("spec") or {}).get("template") or {}).get("spec", {}).get(
        "nodeSelector"
    ) or {}
    selector = ",".join(f"{k}={v}" for k, v in sorted(node_selector.items())) or "<none>"
    return [o["metadata"].get("name", ""), desired, current, ready, updated, available,
            selector, age(o, now)]  # fmt: skip


def _deployment(o: dict[str, Any], now: float) -> Row:
    ready, updated, available = _status_of(o, "readyReplicas", "updatedReplicas",
                                           "availableReplicas")  # fmt: skip
    want = int((o.get("spec") or {}).get("replicas", 1))
    return [o["metadata"].get("name", ""), f"{ready}/{want}", updated, available, age(o, now),
            _selector_text(o)]  # fmt: skip


def _replicaset(o: dict[str, Any], now: float) -> Row:
    current, ready = _status_of(o, "replicas", "readyReplicas")
    want = int((o.get("spec") or {}).get("replicas", 1))
    return [o["metadata"].get("name", ""), want, current, ready, age(o, now), _selector_text(o)]


def _pdb(o: dict[str, Any], now: float) -> Row:
    spec = o.get("spec") or {}
    allowed = int((o.get("status") or {}).get("disruptionsAllowed") or 0)
    return [o["metadata"].get("name", ""), str(spec.get("minAvailable", "N/A")),
            str(spec.get("maxUnavailable", "N/A")), allowed, age(o, now)]  # fmt: skip


PRINTERS: dict[str, Printer] = {
    "daemonsets.apps": (
        [
            NAME,
            _col("Desired", "integer"),
            _col("Current", "integer"),
            _col("Ready", "integer"),
            _col("Up-to-date", "integer"),
            _col("Available", "integer"),
            _col("Node Selector"),
            AGE,
        ],
        _daemonset,
    ),
    "deployments.apps": (
        [
            NAME,
            _col("Ready"),
            _col("Up-to-date", "integer"),
            _col("Available", "integer"),
            AGE,
            _col("Selector", priority=1),
        ],
        _deployment,
    ),
    "replicasets.apps": (
        [
            NAME,
            _col("Desired", "integer"),
            _col("Current", "integer"),
            _col("Ready", "integer"),
            AGE,
            _col("Selector", priority=1),
        ],
        _replicaset,
    ),
    "poddisruptionbudgets.policy": (
        [
            NAME,
            _col("Min Available"),
            _col("Max Unavailable"),
            _col("Allowed Disruptions", "integer"),
            AGE,
        ],
        _pdb,
    ),
    "pods": (
        [
            NAME,
            _col("Ready"),
            _col("Status"),
            _col("Restarts", "string"),
            AGE,
            _col("IP", priority=1),
            _col("Node", priority=1),
            _col("Nominated Node", priority=1),
            _col("Readiness Gates", priority=1),
        ],
        _pod,
    ),
    "services": (
        [
            NAME,
            _col("Type"),
            _col("Cluster-IP"),
            _col("External-IP"),
            _col("Port(s)"),
            AGE,
            _col("Selector", priority=1),
        ],
        _svc,
    ),
    "namespaces": (
        [NAME, _col("Status"), AGE],
        lambda o, now: [
            o["metadata"].get("name", ""),
            (o.get("status") or {}).get("phase", "Active"),
            age(o, now),
        ],
    ),
    "endpointslices.discovery.k8s.io": (
        [NAME, _col("AddressType"), _col("Ports"), _col("Endpoints"), AGE],
        _slice,
    ),
    "endpoints": ([NAME, _col("Endpoints"), AGE], _endpoints),
    "nodes": (
        [
            NAME,
            _col("Status"),
            _col("Roles"),
            AGE,
            _col("Version"),
            _col("Internal-IP", priority=1),
            _col("External-IP", priority=1),
            _col("OS-Image", priority=1),
            _col("Kernel-Version", priority=1),
            _col("Container-Runtime", priority=1),
        ],
        _node,
    ),
    "serviceaccounts": (
        [NAME, _col("Secrets", "integer"), AGE],
        lambda o, now: [o["metadata"].get("name", ""), len(o.get("secrets") or []), age(o, now)],
    ),
    "secrets": (
        [NAME, _col("Type"), _col("Data", "integer"), AGE],
        lambda o, now: [
            o["metadata"].get("name", ""),
            o.get("type", "Opaque"),
            len(o.get("data") or {}),
            age(o, now),
        ],
    ),
    "configmaps": (
        [NAME, _col("Data", "integer"), AGE],
        lambda o, now: [
            o["metadata"].get("name", ""),
            len(o.get("data") or {}) + len(o.get("binaryData") or {}),
            age(o, now),
        ],
    ),
    "events": (
        [_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Message")],
        _event,
    ),
}

DEFAULT_COLUMNS = [
    NAME,
    _col(
        "Created At",
        "date",
        desc=(
            "CreationTimestamp is a timestamp representing "
            "the server time when this object was created."
        ),
    ),
]


def columns_and_rows(
    rt: ResourceType, objs: list[dict[str, Any]], now: float
) -> tuple[list[PrinterColumn], list[Row]]:
    printer = PRINTERS.get(rt.store_key)
    if printer is not None:
        cols, fn = printer
        return cols, [fn(o, now) for o in objs]
    if rt.crd is not None:
        cols = [NAME, *rt.crd.columns]
        if not rt.crd.columns:
            cols.append(AGE)
        return cols, [
            [o["metadata"].get("name", "")]
            + [_crd_cell(o, c, now) for c in rt.crd.columns]
            + ([] if rt.crd.columns else [age(o, now)])
            for o in objs
        ]
    return DEFAULT_COLUMNS, [
        [o["metadata"].get("name", ""), (o.get("metadata") or {}).get("creationTimestamp")]
        for o in objs
    ]


def _crd_cell(o: dict[str, Any], col: PrinterColumn, now: float) -> Any:
    values = jsonpath(o, col.json_path)
    if not values:
        return None
    v = values[0]
    if col.type == "date":
        t = parse_time(v)
        return human_duration(now - t) if t is not None else v
    if col.type in ("integer", "number", "boolean"):
        return v
    if isinstance(v, dict | list):
        import json

        return json.dumps(v, separators=(",", ":"))
    return str(v)


_STEP = re.compile(
    r"\.([A-Za-z0-9_\-]+)|\[(\d+|\*)\]|\[\?\(@\.([A-Za-z0-9_.\-]+)\s*==\s*['\"]([^'\"]*)['\"]\)\]"
)


def jsonpath(obj: Any, path: str) -> list[Any]:
    """The simple JSONPath of printer columns: `.spec.x`, `[0]`, `[*]`, `[?(@.type=="Ready")]`."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if path.startswith("$"):
        path = path[1:]
    current = [obj]
    pos = 0
    while pos < len(path):
        m = _STEP.match(path, pos)
        if not m:
            return []
        pos = m.end()
        nxt: list[Any] = []
        for c in current:
            if m.group(1) is not None:
                if isinstance(c, dict) and m.group(1) in c:
                    nxt.append(c[m.group(1)])
            elif m.group(2) is not None:
                if isinstance(c, list):
                    if m.group(2) == "*":
                        nxt.extend(c)
                    elif int(m.group(2)) < len(c):
                        nxt.append(c[int(m.group(2))])
            elif isinstance(c, list):
                for x in c:
                    got = jsonpath(x, "." + m.group(3))
                    if got and str(got[0]) == m.group(4):
                        nxt.append(x)
        current = nxt
    return current


def to_table(
    rt: ResourceType,
    objs: list[dict[str, Any]],
    list_meta: dict[str, Any],
    include: str,
    now: float,
    columns: bool = True,
) -> dict[str, Any]:
    cols, rows = columns_and_rows(rt, objs, now)
    out: dict[str, Any] = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta}
    if columns:
        out["columnDefinitions"] = [
            {
                "name": c.name,
                "type": c.type,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            }
            for c in cols
        ]
    else:
        out["columnDefinitions"] = None
    out["rows"] = [
        {"cells": cells, "object": _embedded(rt, o, include)}
        for cells, o in zip(rows, objs, strict=True)
    ]
    return out


def _embedded(rt: ResourceType, obj: dict[str, Any], include: str) -> Any:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata", {}),
    }

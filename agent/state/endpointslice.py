"""EndpointSlice (discovery.k8s.io/v1): where a Service's endpoints are, as the cluster sees them.

The cluster's endpoint controller keeps slices up to date from Services'
selectors and pods' readiness; when the store holds slices for a Service, its
endpoints come from them (`Snapshot.build`), not from its selector: they carry
readiness, and they name endpoints on other nodes, whose pods an agent that
watches only its node's pods does not hold.

Slices are written by controllers, not users, and new Kubernetes versions add
fields (hints, zones): unknown fields are ignored here, unlike the kinds users
write, so a new field never drops a Service's endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, Field

from agent.common.errors import FieldError
from agent.common.schema import Bool, Model, Port, Str, parse

from .resource import Meta, ObjectKey, Resource

API_VERSION = "discovery.k8s.io/v1"
KIND = "EndpointSlice"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")


class _Lenient(Model):
    model_config = ConfigDict(extra="ignore")


class Conditions(_Lenient):
    ready: Bool | None = None
    """None means ready, as the API says (a controller that does not know)."""
    serving: Bool | None = None
    terminating: Bool | None = None


class TargetRef(_Lenient):
    kind: Str = ""
    namespace: Str = ""
    name: Str = ""


class Endpoint(_Lenient):
    addresses: tuple[Str, ...] = Field(min_length=1, max_length=100)
    conditions: Conditions = Conditions()
    node_name: Str = ""
    target_ref: TargetRef | None = None

    @property
    def ready(self) -> bool:
        return self.conditions.ready is not False


class SlicePort(_Lenient):
    name: Str = ""
    port: Port | None = None
    """None: "all ports", only for Services without ports, which route nothing here."""
    protocol: Str = "TCP"


class SliceBody(_Lenient):
    address_type: Str
    endpoints: tuple[Endpoint, ...] = Field(default=(), max_length=1000)
    ports: tuple[SlicePort, ...] = Field(default=(), max_length=100)


@dataclass(frozen=True)
class EndpointSlice(Resource):
    service: str
    """The Service it belongs to (label kubernetes.io/service-name); empty: none."""
    body: SliceBody

    def pod_key(self, ep: Endpoint) -> ObjectKey | None:
        ref = ep.target_ref
        if ref is None or ref.kind != "Pod" or not ref.name:
            return None
        return ObjectKey("Pod", ref.namespace or self.meta.namespace, ref.name)


def parse_endpoint_slice(api_version: str, meta: Meta, body: dict[str, Any]) -> EndpointSlice:
    spec = parse(SliceBody, {k: v for k, v in body.items() if k not in _OBJECT_FIELDS})
    if spec.address_type not in ADDRESS_TYPES:
        raise FieldError("addressType", f"{spec.address_type!r} is not one of {ADDRESS_TYPES}")
    return EndpointSlice(
        api_version, KIND, meta, body, meta.labels.get(SERVICE_NAME_LABEL, ""), spec
    )


_OBJECT_FIELDS = ("apiVersion", "kind", "metadata")

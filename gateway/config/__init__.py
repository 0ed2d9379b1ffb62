"""The gateway's configuration: one pydantic model per kind of object it is made of.

What this package is: the definition of everything `slipstream gateway -c FILE`
reads, written once as models on agent/common/schema.py, from which come the
validation (errors name the field as written, and `load_config` the file and line:
`gateway.yaml:12: routes[0].timeouts.request: 'soon' is not a duration`) and the
typed, immutable objects the rest of the gateway reads. One module per area:

- `listeners.py`: listeners, their TLS certificates, limits and head rules;
- `backends.py`: backends, endpoints, load balancing, health checks;
- `routes.py`: routes, matches, filters, timeouts, retries;
- `model.py`: the whole configuration, and the rules across objects (names given
  twice, a reference to no backend, one address for two listeners...);
- `gatewayapi.py`: Gateway API objects (Gateway, HTTPRoute) and Services from the
  cluster, turned into the same model, so the rest of the gateway sees one.

The plugins' own models, with `Consumer` and `PluginSpec`, are in
gateway/plugins/models.py: this package imports the plugins, never the reverse.
None of these modules is compiled by mypyc (it cannot compile pydantic classes); the
compiled request path reads their fields as plain attributes, and where the HTTP
engine wants its own structures (`Limits`, `HeadRules`) a listener builds them once.
"""

from ..plugins.models import Consumer, PluginSpec
from .backends import (
    ActiveCheck,
    BackendSpec,
    EndpointSpec,
    HealthCheck,
    PassiveCheck,
    ServiceRef,
    parse_endpoint,
)
from .gatewayapi import ClusterSource, uses_services
from .listeners import ListenerSpec, TlsCertificate
from .model import GatewayConfig, load_config, parse_config
from .routes import (
    IDEMPOTENT,
    BackendRef,
    Filters,
    HeaderModifier,
    PathMatch,
    PathModifier,
    Redirect,
    Retry,
    Rewrite,
    RouteMatch,
    RouteSpec,
    ValueMatch,
)

__all__ = [
    "IDEMPOTENT",
    "ActiveCheck",
    "BackendRef",
    "BackendSpec",
    "ClusterSource",
    "Consumer",
    "EndpointSpec",
    "Filters",
    "GatewayConfig",
    "HeaderModifier",
    "HealthCheck",
    "ListenerSpec",
    "PassiveCheck",
    "PathMatch",
    "PathModifier",
    "PluginSpec",
    "Redirect",
    "Retry",
    "Rewrite",
    "RouteMatch",
    "RouteSpec",
    "ServiceRef",
    "TlsCertificate",
    "ValueMatch",
    "load_config",
    "parse_config",
    "parse_endpoint",
    "uses_services",
]

"""The gateway's configuration: its model, parsed from YAML, and Gateway API objects.

`model.py` is the typed, validated configuration (`parse_config`, `load_config`)
and `gatewayapi.py` turns the cluster's Gateway, HTTPRoute and Service objects
into the same model, so the rest of the gateway sees one. Plugins parse their
own `config` (gateway/plugins): this package imports them, never the reverse.
"""

from ..plugins.base import Consumer, PluginSpec
from .gatewayapi import ClusterSource, uses_services
from .model import (
    IDEMPOTENT,
    ActiveCheck,
    BackendRef,
    BackendSpec,
    EndpointSpec,
    Filters,
    GatewayConfig,
    HeaderModifier,
    ListenerSpec,
    PassiveCheck,
    PathMatch,
    PathModifier,
    Redirect,
    Retry,
    Rewrite,
    RouteMatch,
    RouteSpec,
    ServiceRef,
    TlsCertificate,
    ValueMatch,
    load_config,
    parse_config,
    parse_endpoint,
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

"""Cluster state as the agent sees it: typed objects and the store that indexes them."""

from .objects import Namespace, ObjectKey, Pod, Resource, Service, parse_object
from .store import ServiceBinding, ServiceEndpoint, Snapshot, StateStore, StateUpdater

__all__ = [
    "Namespace",
    "ObjectKey",
    "Pod",
    "Resource",
    "Service",
    "ServiceBinding",
    "ServiceEndpoint",
    "Snapshot",
    "StateStore",
    "StateUpdater",
    "parse_object",
]

"""Cluster state as the agent sees it: typed objects and the store that indexes them."""

from .objects import Namespace, ObjectKey, Pod, Resource, Service, parse_object
from .store import Endpoint, ServiceBinding, Snapshot, StateStore, StateUpdater

__all__ = [
    "Endpoint",
    "Namespace",
    "ObjectKey",
    "Pod",
    "Resource",
    "Service",
    "ServiceBinding",
    "Snapshot",
    "StateStore",
    "StateUpdater",
    "parse_object",
]

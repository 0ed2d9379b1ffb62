"""The mesh's fixed numbers and names, each defined once, for every process.

Ports are Istio ambient's, so users' habits and firewall rules carry over. The
capture programs read the pod ports at run time from `mesh_config`, which the
agent fills from these (bpf/mesh.h compiles no values in); the socket marks
belong to the datapath alone (agent/node/datapath/abi.py).
"""

from __future__ import annotations

DEFAULT_TRUST_DOMAIN = "cluster.local"
"""The trust domain of SPIFFE IDs when none is configured (Kubernetes' and Istio's default)."""

ADMIN_PORT = 15000
"""The agent's admin endpoint (/config_dump, /logging), on localhost."""
OUTBOUND_PORT = 15001
"""Captured outbound TCP, inside each enrolled pod's namespace."""
INBOUND_PORT = 15006
"""Captured inbound plaintext TCP, inside each enrolled pod's namespace."""
HBONE_PORT = 15008
"""Inbound HBONE (HTTP/2 CONNECT over mTLS), inside each enrolled pod's namespace."""
CA_PORT = 15012
"""The mesh CA's signing endpoint."""
READY_PORT = 15021
"""The agent's readiness endpoint (/healthz/ready)."""

MESH_PORTS = range(15000, 15022)
"""Ports the mesh reserves in a pod (the agent listens on 15001, 15006 and 15008 there; as in
Istio, 15000-15021 are not for apps). HBONE never carries a connection to them: it would
only reach the agent itself."""

CNI_SOCKET = "/var/run/slipstream/cni.sock"
"""Where a node's agent serves slipstream-cni (agent/node/cni.py). The plugin, which runs
alone on the host, spells it again as its default (a unit test keeps them equal)."""

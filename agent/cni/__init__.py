"""The CNI side of a node: `slipstream-cni`, the chained plugin the container runtime runs
for every pod sandbox (plugin.py, standalone), and the agent's endpoint it talks to."""

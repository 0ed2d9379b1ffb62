"""Workload identities: SPIFFE IDs, keys, certificates, and the agent's certificate manager."""

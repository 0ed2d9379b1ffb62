"""Proxying captured connections: the splice, the per-pod listeners and the access log."""

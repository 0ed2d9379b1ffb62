"""The lab: a Kubernetes-like cluster in network namespaces on one Linux machine."""

"""The node agent app: capture, the relay, enrollment, balancing, admin, for the pods of one node."""

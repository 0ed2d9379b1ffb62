"""The node agent app: capture, relay, enrollment, balancing and admin for one node's pods."""

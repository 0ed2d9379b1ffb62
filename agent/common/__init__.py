"""The shared core's base: errors, logging, running components, manifests, units, watching files.

Imported by every other package, it imports nothing of ours (`make lint` checks).
"""

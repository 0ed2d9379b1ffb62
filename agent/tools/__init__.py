"""Operator tools that read the mesh's objects as the agents do: `slipstream policy check`."""

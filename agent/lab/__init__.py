"""The lab: a Kubernetes-like cluster in network namespaces on one Linux machine.

An app on top of the core: it builds nodes and pods from manifests, writes the
objects the agents' file source reads, and starts the CA and one agent per node
as processes, by command line (`python -m agent ca serve`, `... agent`), never
by import. It mints the CA's credentials itself (agent.ca's credential file),
as an operator would with `slipstream ca token`.

Public surface for other apps (`slipstream policy check` reads a running lab):
`Lab`, `LabError` and `resolve` (which lab a command means). They load on first
use: every pod's supervisor and workloads (`python -m agent.lab.supervisor`,
`slipstream app`) import this package first, and must not pay for the lab's
orchestration modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cli import resolve
    from .errors import LabError
    from .lab import Lab

__all__ = ["Lab", "LabError", "resolve"]

_HOMES = {"Lab": ".lab", "LabError": ".errors", "resolve": ".cli"}


def __getattr__(name: str) -> Any:
    # Module attributes looked up by name (PEP 562): a name of __all__ imports its module
    # then; any other name is an AttributeError, so `from agent.lab import model` still
    # imports the submodule. No cycle hides here: the lab's own modules never import names from it.
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home, __name__), name)

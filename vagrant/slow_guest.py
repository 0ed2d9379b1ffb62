"""A pytest plugin for lab tests in an emulated VM (`make vm`, vagrant/check.sh): every start-up
deadline of the lab and every `wait_until` of the lab tests is multiplied by
SLIPSTREAM_SLOW_FACTOR (default 10). Under qemu's software emulation on a shared machine the
guest runs several times slower than a host, and the lab's API server alone takes longer than
its 30 s to import and listen. Only deadlines change; every assertion stays as it is.

    PYTHONPATH=/slipstream/vagrant pytest -p slow_guest tests/lab/...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Plugins load before pytest puts the repository on sys.path (for `tests`) through conftest.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.lab import cluster, mesh, pods
from tests.lab import labkit

FACTOR = float(os.environ.get("SLIPSTREAM_SLOW_FACTOR", "10"))

cluster.READY_TIMEOUT *= FACTOR
mesh.READY_TIMEOUT *= FACTOR
mesh.ENROLL_TIMEOUT *= FACTOR
pods.POD_START_TIMEOUT *= FACTOR

_wait_until = labkit.wait_until


def _slow_wait_until(pred, timeout: float, what: str):
    return _wait_until(pred, timeout * FACTOR, what)


# Loaded with -p, before the test modules import it by name from labkit.
labkit.wait_until = _slow_wait_until

"""Shared test settings; `pytester` runs inner sessions (the lab cleanup-on-failure test).

Also refuses to run on a stale mypyc build: Python imports a module's compiled
.so before its .py, so an edit not yet compiled would not be what is tested. And a SIGTERM
(a CI timeout, a `kill`) ends the run as Ctrl-C does, so fixtures still tear down: killed
outright, pytest would leave labs' namespaces and processes behind for the next run.
"""

import signal
from pathlib import Path
from types import FrameType

import pytest

pytest_plugins = ["pytester"]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    gateway = Path(__file__).resolve().parent.parent / "gateway"
    stale = []
    for built in gateway.rglob("*.so"):
        source = built.with_name(built.name.split(".")[0] + ".py")
        if source.exists() and source.stat().st_mtime > built.stat().st_mtime:
            stale.append(str(source.relative_to(gateway.parent)))
    if stale:
        raise pytest.UsageError(
            f"changed since compiled: {', '.join(sorted(stale))}; run ./scripts/compile.sh "
            "(every make target does) or SLIPSTREAM_INTERPRETED=1 ./scripts/compile.sh"
        )

"""A program the tests need from the machine: its path, or the test fails (where lab tests may
not be skipped, SLIPSTREAM_REQUIRE_LAB=1, as in `make test` and CI) or is skipped, saying
that `make setup` installs it."""

from __future__ import annotations

import os
import shutil

import pytest


def program(name: str, package: str = "") -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is missing: run `make setup`" + (
            f" (installs {package})" if package else ""
        )
        if os.environ.get("SLIPSTREAM_REQUIRE_LAB") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path

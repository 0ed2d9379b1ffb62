"""Lab test fixtures: real namespaces, real processes, torn down even when a test fails.

Lab tests need root. Without it they are skipped, unless SLIPSTREAM_REQUIRE_LAB=1
(set by `make test`), where a skip would hide a broken CI, so they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from agent.common.manifest import load_text
from agent.lab import net
from agent.lab.lab import Lab
from agent.lab.model import lab_prefix
from tests.lab.labkit import CREATED, new_lab_name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("SLIPSTREAM_REQUIRE_LAB") == "1":
            pytest.fail("lab tests need root (SLIPSTREAM_REQUIRE_LAB=1 forbids skipping them)")
        pytest.skip("lab tests need root")


@pytest.fixture(scope="session", autouse=True)
def _no_leftovers() -> Iterator[None]:
    """After the session, no lab made by it may have left a namespace behind."""
    yield
    left = [n for name in sorted(CREATED) for n in net.list_netns(lab_prefix(name))]
    for name in sorted(CREATED):
        Lab(name).down()
    assert not left, f"lab tests left namespaces behind: {left}"


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Lab]]:
    """`make_lab(manifest_text)` -> a running Lab; every lab made is taken down at teardown."""
    labs: list[Lab] = []

    def _make(manifest: str, name: str | None = None) -> Lab:
        lab = Lab(name or new_lab_name())
        CREATED.add(lab.name)
        labs.append(lab)
        lab.up(load_text(manifest, "<test manifest>"))
        return lab

    yield _make
    for lab in labs:
        lab.down()

"""What every fuzz target shares: interpreted imports of our code, and the atheris main.

The gateway's request path is compiled with mypyc (scripts/compile.sh), and
atheris can only trace Python bytecode: `interpreted()` makes the packages
named import from their .py sources in this process, so coverage guides the
fuzzer. (The compiled build is exercised by the property tests in tests/unit.)
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import atheris


class _SourceOnly(importlib.abc.MetaPathFinder):
    def __init__(self, packages: Sequence[str]) -> None:
        self.packages = tuple(packages)

    def find_spec(self, name, path, target=None):  # type: ignore[no-untyped-def]
        if name.split(".")[0] not in self.packages:
            return None
        dirs = path or sys.path
        for d in dirs:
            finder = importlib.machinery.FileFinder(
                d,
                (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES),
            )
            spec = finder.find_spec(name, target)
            if spec is not None:
                return spec
        return None


def interpreted(*packages: str) -> None:
    """Import `packages` (and their submodules) from source from now on."""
    for name in list(sys.modules):
        if name.split(".")[0] in packages:
            del sys.modules[name]
    sys.meta_path.insert(0, _SourceOnly(packages))


def main(fuzz_one: Callable[[bytes], None], seeds: Sequence[bytes] = ()) -> None:
    """atheris's entry point; the seeds are written into an empty corpus first."""
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus and seeds:
        d = Path(corpus[0])
        if d.is_dir() and not any(d.iterdir()):
            for i, s in enumerate(seeds):
                (d / f"seed-{i}").write_bytes(s)
    atheris.instrument_all()  # every Python function loaded by now feeds coverage back
    atheris.Setup(sys.argv, fuzz_one)
    atheris.Fuzz()

"""Run benchmarks: `python -m tests.bench [name ...]` (all of them by default)."""

from __future__ import annotations

import sys

from tests.bench import authz, capture, gateway, kube, mesh

BENCHES = {
    "capture": capture.run,
    "mesh": mesh.run,
    "authz": authz.run,
    "gateway": gateway.run,
    "kube": kube.run,
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    for name in names:
        if name not in BENCHES:
            print(f"unknown benchmark {name!r}; known: {', '.join(BENCHES)}", file=sys.stderr)
            return 2
    for name in names:
        print(f"== {name}", flush=True)
        print(BENCHES[name](), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The CustomResourceDefinitions in deploy/crds/, generated from the models (`make crds`).

    python -m agent.tools.crds [--check] [DIR]

writes one file per kind (`--check`: exits 1 naming the files that differ from what the
models generate, which tests/unit/test_crds.py also checks). Each CRD is Istio's shape
(group security.istio.io; versions v1 and v1beta1 served, v1 stored; the same names,
short names, categories and printer columns as Istio ships) with the OpenAPI schema of
our model, `schema.openapi(AuthorizationPolicySpec)` and `...(PeerAuthenticationSpec)`.

Where the model is stricter than Istio's CRD. Istio validates in two places: its CRD's
schema (types, enums, maxItems, CEL rules) at the API server, and its webhook (empty
lists, DENY without rules, conditions without values, wildcards...). Our models refuse
all of that and a few things Istio takes (CUSTOM, targetRef(s), a `spiffe://`
principal: README, "Authorization policy"). The CRD carries what a structural schema can
say without CEL: types, enums, maxItems and maxLength; every field Istio's schema has
stays declared, also the ones we refuse, so the API server prunes nothing (a pruned
`targetRefs` would turn a waypoint's policy into one for the whole namespace). The rest
is refused by the agent when it reads the object: the policy then fails closed in its
scope, or its last good version keeps enforcing, with the reason in its status and the
agent's /config_dump, as Istio's webhook would have said it at apply time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.state.crds import files

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "deploy" / "crds"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agent.tools.crds", description=__doc__)
    ap.add_argument("dir", nargs="?", default=str(DEFAULT_DIR))
    ap.add_argument("--check", action="store_true", help="exit 1 if the files are stale")
    args = ap.parse_args(argv)
    out = Path(args.dir)
    stale = []
    for name, text in files().items():
        path = out / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(str(path))
        if not args.check:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print(f"stale (run `make crds`): {', '.join(stale)}", file=sys.stderr)
        return 1
    for name in stale:
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

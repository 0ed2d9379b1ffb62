"""Runs the fuzz targets of this folder, each in its own atheris process, for a fixed time.

    python -m tests.fuzz [NAME ...] [--seconds 60]

Prints one line per target (runs, new coverage, crash file if any) and exits
non-zero if a target crashed.
"""

from __future__ import annotations

import argparse
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUT = ROOT / ".fuzz"


def targets() -> list[str]:
    return sorted(
        m.name.removeprefix("fuzz_")
        for m in pkgutil.iter_modules([str(HERE)])
        if m.name.startswith("fuzz_")
    )


def run(name: str, seconds: int) -> tuple[bool, str]:
    work = OUT / name
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    log = work / "last-run.log"
    argv = [
        sys.executable, "-m", f"tests.fuzz.fuzz_{name}",
        f"-max_total_time={seconds}", f"-artifact_prefix={work}/", "-print_final_stats=1",
        "-timeout=10", "-rss_limit_mb=2048", str(corpus),
    ]  # fmt: skip
    t0 = time.monotonic()
    with open(log, "w") as out:
        rc = subprocess.call(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    runs = next((ln.rpartition(":")[2].strip() for ln in text.splitlines()
                 if ln.startswith("stat::number_of_executed_units")), "?")  # fmt: skip
    crashes = sorted(p.name for p in work.iterdir() if p.name.startswith(("crash-", "timeout-")))
    inputs = len(list(corpus.iterdir()))
    summary = (
        f"{name}: {runs} runs in {time.monotonic() - t0:.0f} s, corpus {inputs} inputs, exit {rc}"
        + (f", findings: {', '.join(crashes)}" if crashes else "")
    )
    return rc == 0, summary + f" (log: {log.relative_to(ROOT)})"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz")
    p.add_argument("names", nargs="*", help=f"targets (default all: {', '.join(targets())})")
    p.add_argument("--seconds", type=int, default=60, help="per target")
    args = p.parse_args()
    names = args.names or targets()
    unknown = set(names) - set(targets())
    if unknown:
        p.error(f"unknown targets: {', '.join(sorted(unknown))}")
    ok = True
    for name in names:
        passed, summary = run(name, args.seconds)
        print(summary, flush=True)
        ok = ok and passed
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

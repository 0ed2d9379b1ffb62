"""Fuzzing (`make fuzz`, not in CI): coverage-guided with atheris, one module per target.

Each `fuzz_<name>.py` here defines `fuzz_one(data: bytes) -> None`, which must
return normally or raise only the exceptions its code documents for bad input
(anything else is a finding), and `SEEDS`, a few valid inputs to start from.
`python -m tests.fuzz [NAME ...] --seconds N` runs each target in its own
process for N seconds, keeps its corpus in .fuzz/<name>/corpus, and
writes a crashing input to .fuzz/<name>/ (see README, Development).
"""

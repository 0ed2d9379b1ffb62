# Every target sets up what it needs first (Debian packages, kernel-header
# links for bcc, .venv), so on a fresh Debian 12 machine, as root:
#   make demo    run the demo lab until Ctrl-C
#   make test    lint, type-check and run every test (unit, functional, lab)
#   make test-loaded   the same beside a CPU hog (the suite must not need an idle machine)
#   make bench   benchmarks (BENCH=capture for one of them)
#   make fuzz    coverage-guided fuzzing of tests/fuzz targets (not in CI)
#   make image   the container image deploy/ names (make image-test runs it; not in CI)
#   make vm      vagrant/ checked end to end in a local VM (35-45 min under emulation; not in CI)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-loaded lint unit bench fuzz crds image image-test vm clean

setup:
	@./scripts/setup.sh
	@./scripts/compile.sh

demo: setup
	$(BIN)/slipstream demo

lint: setup
	$(BIN)/ruff check agent gateway tests
	$(BIN)/ruff format --check agent gateway tests
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# Lab tests may not be skipped here: CI runs this as root.
test: lint
	SLIPSTREAM_REQUIRE_LAB=1 $(BIN)/pytest

# `make test` with two CPU-bound processes beside it for its whole run, killed after (also on
# Ctrl-C or failure): no test may depend on how much work an idle machine fits in a window.
HOGS ?= 2
test-loaded: setup
	@set -e; hogs=""; \
	trap 'kill $$hogs 2>/dev/null || true' EXIT INT TERM; \
	for i in $$(seq $(HOGS)); do python3 -c 'while True: pass' & hogs="$$hogs $$!"; done; \
	echo "test-loaded: $(HOGS) CPU hogs running (pids$$hogs)"; \
	$(MAKE) --no-print-directory test

unit: setup
	$(BIN)/pytest tests/unit tests/functional

# The CRDs in deploy/crds/, generated from the models (tests/unit/test_crds.py checks them).
crds: setup
	$(BIN)/python -m agent.tools.crds

# Benchmarks against real peers in labs; reports land in tests/bench/results/.
# BENCH_DURATION (s per measurement) and BENCH_ROUNDS tune the run.
bench: setup
	$(BIN)/python -m tests.bench $(BENCH)

# Coverage-guided fuzzing (atheris) of every target in tests/fuzz, FUZZ_SECONDS each; not in CI.
# FUZZ=name for one target. Findings land in .fuzz/<target>/.
FUZZ_SECONDS ?= 120
fuzz: setup
	$(BIN)/pip install -q -e '.[dev,fuzz]'
	$(BIN)/python -m tests.fuzz --seconds $(FUZZ_SECONDS) $(FUZZ)

# The container image slipstream:dev that deploy/ names (deploy/image/Containerfile), built
# with podman from a Debian base made by mmdebstrap, no registry needed: about 4 minutes the
# first time, about 2 after (the base is kept). `scripts/image.sh --twice` checks that two
# builds give the same image ID. Neither target is part of `make test` or CI.
image:
	@./scripts/image.sh

# Builds the image, then runs it as the manifests do (tests/image): the entrypoint, each
# manifest's command, and bcc compiling and loading the programs inside it.
image-test: setup image
	SLIPSTREAM_IMAGE_TEST=1 $(BIN)/pytest tests/image

# vagrant/ for real: builds a local box (cached in .vm/), `vagrant up` under qemu (TCG, user
# networking only), provisions with scripts/setup.sh, runs lab tests inside, destroys the VM and
# stops and removes what it started (vagrant/check.sh; VM_TESTS picks the tests). Not in CI.
vm:
	./vagrant/check.sh

clean:
	-$(BIN)/slipstream lab down --all
	SLIPSTREAM_INTERPRETED=1 ./scripts/compile.sh
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .image

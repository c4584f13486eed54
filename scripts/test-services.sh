#!/usr/bin/env bash
# Install what the test suite needs to run its own PostgreSQL and Redis (Debian's packages),
# unless they are already running here or already installed. tests/services.py starts
# private instances at test time when nothing answers on the usual addresses.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

missing=()
if ! port_open "${REDIS_PORT:-6379}" && ! command -v redis-server >/dev/null; then
    missing+=(redis-server)
fi
if ! port_open "${POSTGRES_PORT:-5432}" && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    missing+=(postgresql)
fi
if ((${#missing[@]})); then
    echo "installing for the tests: ${missing[*]}" >&2
    if ! command -v apt-get >/dev/null; then
        echo "make test needs ${missing[*]} (no apt-get here: install them, or set MODELYARD_TEST_DATABASE_URL / MODELYARD_TEST_REDIS_URL)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    # Debian's postgresql package starts a cluster of its own; the tests use a private one.
fi

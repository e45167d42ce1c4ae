#!/usr/bin/env bash
# Sets up a test environment and runs the whole suite (the README's test command; CI runs it too).
#  - Debian's PostgreSQL (the MLflow server's backend in the scale-out tests) and Chromium (the MLflow UI
#    test); the tests start and stop their own throwaway servers on loopback.
#  - The CPU torch wheel first: a bare `torch` would pull a multi-GB CUDA build.
#  - ruff (pinned in the `test` extra, so formatting does not drift with its releases) checks lint and format.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
if ! command -v chromium >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -q
        apt-get install -y -q --no-install-recommends postgresql chromium >/dev/null
    else
        echo "note: install PostgreSQL and Chromium (Debian: apt-get install postgresql chromium) or the tests that need them skip"
    fi
fi

python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0
pip install -q -e ".[test]"

# Lint and format first (fast, and a failure names the file and line), then the suite; the integration
# tests start their own services on loopback.
ruff check .
ruff format --check .
python -m pytest -q

#!/usr/bin/env bash
# The test command the README gives and .ci/run calls: set up, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"

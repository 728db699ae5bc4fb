#!/usr/bin/env bash
# The main job on a fresh machine: set up, then mesh the sample manifests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "--- meshctl inject samples/shop/deployments.yaml" >&2
.venv/bin/meshctl inject samples/shop/deployments.yaml

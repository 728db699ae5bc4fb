#!/usr/bin/env bash
# The main job on a fresh machine: set up, then mesh the sample workloads.
# samples/shop/deployments.yaml is a saved `kubectl get -n shop deploy,svc -o yaml`, so this
# is the pipeline `kubectl get -n shop deploy,svc -o yaml | meshctl inject - | kubectl apply -f -`
# with the cluster left out at both ends.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "--- meshctl inject - < samples/shop/deployments.yaml" >&2
.venv/bin/meshctl inject - < samples/shop/deployments.yaml

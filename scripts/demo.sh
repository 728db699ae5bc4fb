#!/usr/bin/env bash
# The main job on a fresh machine: set up, then run the local demo (the three-API
# shop meshed on loopback: identity and destination services, a proxy per API,
# mTLS, retries), and show the pipeline that meshes the same workloads in a cluster.
# Extra arguments go to `meshctl demo` (e.g. --duration 1m, --rps 50, -o json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "--- meshctl inject - < samples/shop/deployments.yaml   (what kubectl apply would get in a cluster)" >&2
.venv/bin/meshctl inject - < samples/shop/deployments.yaml > /dev/null
echo "--- meshctl demo $*" >&2
exec .venv/bin/meshctl demo "$@"

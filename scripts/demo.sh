#!/usr/bin/env bash
# The main job on a fresh machine: set up, bring the local mesh up (the walkthrough's three
# APIs, each behind its meshctl-proxy, with the identity and destination services, a real
# Prometheus, and a load generator sending 5 requests/s), run the walkthrough's
# `ab -n 1000` against the gateway, and print where to look.  The mesh stays up:
# `.venv/bin/meshctl demo down` stops it.  Extra arguments go to `meshctl demo up`
# (e.g. --netns as root); MESHCTL_DEMO_DIR chooses the state directory.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "--- meshctl inject - < samples/shop/deployments.yaml   (what kubectl apply would get in a cluster)" >&2
.venv/bin/meshctl inject - < samples/shop/deployments.yaml > /dev/null
echo "--- meshctl demo up --traffic 5 $*" >&2
.venv/bin/meshctl demo up --traffic 5 "$@"
echo "--- meshctl demo load -n 1000   (the walkthrough's ab -n 1000 http://GATEWAY/api/products/1)" >&2
.venv/bin/meshctl demo load -n 1000
cat >&2 <<'NEXT'
--- the mesh stays up (the load generator keeps 5 requests/s going); the story goes on
    (docs/walkthrough.md, all of it with real output):
    .venv/bin/meshctl demo set price-api --failure-rate 0.3      # the gateway drops to ~70% success
    .venv/bin/meshctl profile --open-api samples/swagger/price-api.json price-api-svc -n shop --ignore-cluster \
        | .venv/bin/meshctl demo apply -f -                      # its route is retryable, picked up live
    .venv/bin/meshctl viz routes deploy/product-gateway-api -n shop --to svc/price-api-svc -o wide
    .venv/bin/meshctl demo status / demo down                  # what runs / stop everything
NEXT

#!/bin/sh
# Container and load-balancer health probe for the keycast signer.
#
# Usage: healthcheck.sh [signer]
#   Exits 0 when GET /health answers 200, 1 otherwise. The optional "signer" argument is accepted
#   so the Rust original's `healthcheck.sh signer` invocations keep working.
#
# Why liveness and not readiness: a container that is restarted because a relay is down does not
# get the relay back, it only loses its warm state. /ready and the deeper checks belong to
# check-signer.sh (cron, alerting) and to Cloud Run's startup probe.
#
# Environment:
#   KEYCAST_HEALTH_URL  full URL to probe (default http://127.0.0.1:${PORT:-8080}/health)
#   KEYCAST_HEALTH_TIMEOUT  seconds before the probe gives up (default 4, under Docker's 5 s timeout)
set -eu

case "${1:-signer}" in
    signer) ;;
    *) echo "usage: healthcheck.sh [signer]" >&2; exit 2 ;;
esac

url=${KEYCAST_HEALTH_URL:-http://127.0.0.1:${PORT:-8080}/health}
timeout=${KEYCAST_HEALTH_TIMEOUT:-4}

if body=$(curl -fsS --max-time "$timeout" "$url" 2>&1); then
    echo "healthy: $url answered ${body}"
    exit 0
fi
echo "unhealthy: $url: ${body}" >&2
exit 1

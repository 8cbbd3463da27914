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
# Environment (the first one set says where the daemon is; KEYCAST_HEALTH and PORT are the
# daemon's own settings, read in the daemon's order):
#   KEYCAST_HEALTH_URL  full URL to probe, for a daemon elsewhere (e.g. http://10.0.0.5:8080/health)
#   KEYCAST_HEALTH      the daemon's health endpoint, a Twisted endpoint string: tcp:PORT,
#                       tcp:PORT:interface=ADDR, tcp6:PORT:interface=\:\:1 or unix:PATH (probed
#                       with curl --unix-socket); an interface of 0.0.0.0 or :: (or none) is
#                       probed on loopback, as `keycast check` does
#   PORT                the daemon's port on every interface (probed on 127.0.0.1)
#   (none)              the daemon's default, tcp:8080:interface=127.0.0.1
#   KEYCAST_HEALTH_TIMEOUT  seconds before the probe gives up (default 4, under Docker's 5 s timeout)
set -eu

# shellcheck source-path=SCRIPTDIR
# shellcheck source=health-endpoint.sh
. "$(dirname -- "$0")/health-endpoint.sh"

case "${1:-signer}" in
    signer) ;;
    *) echo "usage: healthcheck.sh [signer]" >&2; exit 2 ;;
esac

timeout=${KEYCAST_HEALTH_TIMEOUT:-4}
set -- -fsS --max-time "$timeout"
if [ -n "${KEYCAST_HEALTH_URL:-}" ]; then
    url=$KEYCAST_HEALTH_URL
    where=$url
else
    daemon_endpoint
    if ! endpoint_target "$endpoint"; then
        echo "unhealthy: cannot probe the health endpoint '$endpoint' ($origin) from here;" \
            "set KEYCAST_HEALTH_URL to its http:// URL" >&2
        exit 1
    fi
    url=$target_url/health
    where=$url
    if [ -n "$target_socket" ]; then
        set -- "$@" --unix-socket "$target_socket"
        where="unix:$target_socket /health"
    fi
fi

if body=$(curl "$@" "$url" 2>&1); then
    echo "healthy: $where answered ${body}"
    exit 0
fi
echo "unhealthy: $where: ${body}" >&2
exit 1

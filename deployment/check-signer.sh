#!/bin/bash
# Enhanced monitoring of the keycast signer, for cron and alerting (the guide's check-signer.sh).
#
# Unlike the Rust original's script it greps no logs: every figure comes from the daemon's own
# HTTP endpoints, so it works the same under systemd, supervisor, Docker and Cloud Run, and it does
# not decay an hour after start-up.
#
# Usage: check-signer.sh [--url BASE] [--min-relays N] [--max-error-rate PERCENT]
#                        [--min-requests N] [--max-idle SECONDS] [--state FILE] [--timeout SECONDS]
#
#   --url BASE             daemon base URL (env KEYCAST_URL); without it, the daemon's own setting
#                          says where it is: KEYCAST_HEALTH (tcp:PORT[:interface=ADDR], tcp6:...,
#                          unix:PATH; an interface of 0.0.0.0 or :: is dialled on loopback), else
#                          PORT (127.0.0.1:PORT), else the default tcp:8080:interface=127.0.0.1
#   --min-relays N         fewer connected relays than N is a WARNING; none is CRITICAL
#                          (env KEYCAST_CHECK_MIN_RELAYS, default 2)
#   --max-error-rate P     a share of NIP-46 requests answered with an error above P percent is a
#                          WARNING (env KEYCAST_CHECK_MAX_ERROR_RATE, default 10)
#   --min-requests N       the error rate is judged only over at least N requests
#                          (env KEYCAST_CHECK_MIN_REQUESTS, default 20)
#   --max-idle SECONDS     no NIP-46 request for longer than this is a WARNING, also when none came
#                          since a start-up longer ago than this; 0 turns the check off, which
#                          suits signers with few users (env KEYCAST_CHECK_MAX_IDLE, default 0)
#   --state FILE           remember the request counters here, so the error rate is that of the
#                          requests since the previous run instead of since start-up
#                          (env KEYCAST_CHECK_STATE, default none)
#   --timeout SECONDS      per HTTP request (env KEYCAST_CHECK_TIMEOUT, default 5)
#
# Exit status (the monitoring-plugin convention, so cron, Nagios and Icinga read it alike):
#   0 OK, 1 WARNING, 2 CRITICAL (not alive, not ready, or no relay connected), 3 UNKNOWN
#   (bad usage, or /status unreadable while /health answers).
# Cron: */5 * * * * /opt/keycast/scripts/check-signer.sh --state /opt/keycast/database/.check-state \
#           || mail -s "Keycast signer alert" admin@example.com
set -uo pipefail

# shellcheck source-path=SCRIPTDIR
# shellcheck source=health-endpoint.sh
. "$(dirname -- "$0")/health-endpoint.sh"

base=${KEYCAST_URL:-}
min_relays=${KEYCAST_CHECK_MIN_RELAYS:-2}
max_error_rate=${KEYCAST_CHECK_MAX_ERROR_RATE:-10}
min_requests=${KEYCAST_CHECK_MIN_REQUESTS:-20}
max_idle=${KEYCAST_CHECK_MAX_IDLE:-0}
state=${KEYCAST_CHECK_STATE:-}
timeout=${KEYCAST_CHECK_TIMEOUT:-5}

usage() {
    sed -n '/^# Usage:/,/^# Exit status/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 3
}

while [ $# -gt 0 ]; do
    case "$1" in
        --url) base=${2:?}; shift 2 ;;
        --min-relays) min_relays=${2:?}; shift 2 ;;
        --max-error-rate) max_error_rate=${2:?}; shift 2 ;;
        --min-requests) min_requests=${2:?}; shift 2 ;;
        --max-idle) max_idle=${2:?}; shift 2 ;;
        --state) state=${2:?}; shift 2 ;;
        --timeout) timeout=${2:?}; shift 2 ;;
        -h|--help) usage ;;
        *) echo "UNKNOWN: unknown argument $1" >&2; usage ;;
    esac
done
for number in "$min_relays" "$min_requests" "$max_idle" "$timeout"; do
    case "$number" in
        ''|*[!0-9]*) echo "UNKNOWN: not a whole number: '$number'"; exit 3 ;;
    esac
done
case "$max_error_rate" in
    ''|*[!0-9.]*) echo "UNKNOWN: not a percentage: '$max_error_rate'"; exit 3 ;;
esac
# Where the daemon is: --url / KEYCAST_URL, else what the daemon itself listens on.
socket=
if [ -z "$base" ]; then
    daemon_endpoint
    if ! endpoint_target "$endpoint"; then
        echo "UNKNOWN: cannot dial the health endpoint '$endpoint' ($origin) from here;" \
            "give the daemon's URL with --url http://HOST:PORT"
        exit 3
    fi
    base=$target_url
    socket=$target_socket
fi
base=${base%/}
curl_socket=()
if [ -n "$socket" ]; then
    curl_socket=(--unix-socket "$socket")
fi

workdir=$(mktemp -d) || { echo "UNKNOWN: cannot create a temporary directory"; exit 3; }
trap 'rm -rf "$workdir"' EXIT

# where PATH: the URL of PATH, for messages.
where() {
    if [ -n "$socket" ]; then echo "/$1 on unix:$socket"; else echo "$base/$1"; fi
}

# fetch PATH: the body goes to $workdir/PATH, the HTTP status (000 when unreachable) to stdout.
fetch() {
    curl -sS --max-time "$timeout" ${curl_socket[@]+"${curl_socket[@]}"} -o "$workdir/$1" \
        -w '%{http_code}' "$base/$1" 2>"$workdir/$1.err"
}

code=$(fetch health)
if [ "$code" != 200 ]; then
    echo "CRITICAL: $(where health) not responding (HTTP $code) $(head -c 200 "$workdir/health.err")"
    exit 2
fi
echo "ok: health endpoint responding"

code=$(fetch ready)
if [ "$code" != 200 ]; then
    echo "CRITICAL: signer not ready (HTTP $code): $(head -c 500 "$workdir/ready")"
    exit 2
fi
echo "ok: ready (database open, authorizations loaded, relay subscription live)"

code=$(fetch status)
if [ "$code" != 200 ]; then
    echo "UNKNOWN: $(where status) answered HTTP $code"
    exit 3
fi

exec python3 - "$workdir/status" "$min_relays" "$max_error_rate" "$min_requests" "$max_idle" "$state" <<'PY'
import json
import os
import sys
import tempfile
import time

status_path, min_relays, max_error_rate, min_requests, max_idle, state_path = sys.argv[1:]
min_relays, min_requests, max_idle = int(min_relays), int(min_requests), int(max_idle)
max_error_rate = float(max_error_rate)

try:
    with open(status_path, "rb") as f:
        status = json.load(f)
    relays = status["relays"]
    counters = status["requests"]
    last_request_at = status.get("last_request_at")
    uptime = status.get("uptime_seconds")
except (ValueError, KeyError, TypeError) as e:
    print(f"UNKNOWN: /status is not the expected JSON ({type(e).__name__}: {e})")
    sys.exit(3)

worst = 0
def report(level, text):
    global worst
    worst = max(worst, level)
    print(("ok", "WARNING", "CRITICAL")[level] + ": " + text)

connected = [r["url"] for r in relays if r.get("connected")]
down = [r["url"] for r in relays if not r.get("connected")]
subscribed = sum(1 for r in relays if r.get("subscribed"))
text = f"{len(connected)}/{len(relays)} relays connected, {subscribed} subscribed"
if down:
    text += " (down: " + ", ".join(down) + ")"
if not connected:
    report(2, text)
elif len(connected) < min_relays:
    report(1, text + f"; fewer than {min_relays}")
else:
    report(0, text)

ok_total = sum(int(c.get("ok", 0)) for c in counters.values())
errors_total = sum(int(c.get("error", 0)) for c in counters.values())
ok, errors = ok_total, errors_total
window = "since start-up"
if state_path:
    try:
        with open(state_path) as f:
            previous = json.load(f)
        # Counters that went down mean the daemon restarted: fall back to its lifetime counters.
        if previous["ok"] <= ok_total and previous["error"] <= errors_total:
            ok, errors = ok_total - previous["ok"], errors_total - previous["error"]
            window = "since the previous check"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    directory = os.path.dirname(os.path.abspath(state_path))
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False) as f:
        json.dump({"ok": ok_total, "error": errors_total}, f)
    os.replace(f.name, state_path)
total = ok + errors
rate = 100.0 * errors / total if total else 0.0
text = f"{errors} of {total} NIP-46 requests answered with an error {window} ({rate:.1f}%)"
if total >= min_requests and rate > max_error_rate:
    report(1, text + f"; above {max_error_rate:g}%")
else:
    report(0, text)

if last_request_at is None:
    # A daemon restarted into silence (clients pointed at another relay, a subscription that
    # hears nothing) never gets a last_request_at: judge its uptime instead.
    known = isinstance(uptime, (int, float)) and not isinstance(uptime, bool)
    if max_idle and known and uptime > max_idle:
        report(1, f"no NIP-46 request since start-up {int(uptime)} s ago; "
                  f"idle for more than {max_idle} s")
    else:
        print("info: no NIP-46 request since start-up (normal when no client is active)")
else:
    idle = max(0, int(time.time() - float(last_request_at)))
    text = f"last NIP-46 request {idle} s ago"
    if max_idle and idle > max_idle:
        report(1, text + f"; idle for more than {max_idle} s")
    else:
        report(0, text)

print(("OK", "WARNING", "CRITICAL")[worst] + ": keycast signer " + ("healthy", "degraded", "failing")[worst])
sys.exit(worst)
PY

#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine and runs it with trial.
# Usage: bash tests/run.sh [trial arguments, default: tests]
# The interop tests need Node packages and a second relay venv; this script installs both.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  command -v shellcheck >/dev/null || need+=(shellcheck)
  command -v systemd-analyze >/dev/null || need+=(systemd)
  command -v openssl >/dev/null || need+=(openssl)
  command -v sqlite3 >/dev/null || need+=(sqlite3)
  command -v curl >/dev/null || need+=(curl)
  command -v logrotate >/dev/null || need+=(logrotate)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip 2>&1 | grep -v 'is ignored' || true
.venv/bin/pip install -q --config-settings editable_mode=compat -e '.[test]' 2>&1 | grep -v 'is ignored' || true

if [ -f tests/interop/package.json ] && command -v npm >/dev/null; then
  (cd tests/interop && npm install --silent --no-audit --no-fund >/dev/null)
fi
if [ -f tests/interop/relay-requirements.txt ]; then
  python3 -m venv .venv-relay
  .venv-relay/bin/pip install -q -r tests/interop/relay-requirements.txt 2>&1 | grep -v 'is ignored' || true
fi

export PATH="$top/.venv/bin:$PATH"
log=$(mktemp)
set +e
.venv/bin/python -m twisted.trial --temp-directory="$top/_trial_temp" "${@:-tests}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
summary=$(grep -E '^(PASSED|FAILED) \(' "$log" | tail -n 1)
count() { printf '%s' "$summary" | grep -oE "$1=[0-9]+" | cut -d= -f2 || true; }
passed=$(count successes); failures=$(count failures); errors=$(count errors)
skipped=$(count skips); failed=$(( ${failures:-0} + ${errors:-0} ))
echo "trial: ${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped"
rm -f "$log"
exit "$status"

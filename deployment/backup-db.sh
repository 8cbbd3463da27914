#!/bin/bash
# Daily backup of the keycast database, for cron: `0 2 * * * /opt/keycast/scripts/backup-db.sh`.
#
# Usage: backup-db.sh [BACKUP_DIR]
#
# It uses `keycast backup` (SQLite's online backup API) rather than copying the file, so a running
# daemon is neither stopped nor caught half-way through a write, and the WAL is included. Each
# copy is checked with PRAGMA integrity_check before it counts as a backup;
# backups older than the retention are then deleted.
#
# The backups hold the users' keys encrypted under the master key (or KMS): they are useless
# without it, and the master key is NOT copied here. Keep it backed up somewhere else.
#
# Environment:
#   KEYCAST_BACKUP_DIR        where backups go when no argument is given (default /opt/keycast/backups)
#   KEYCAST_BACKUP_KEEP_DAYS  days of backups to keep (default 7)
#   KEYCAST_BIN               the keycast admin command (default: keycast on PATH, else
#                             /opt/keycast/venv/bin/keycast)
#   DATABASE_PATH             the database to back up, read by keycast itself
#                             (default /opt/keycast/database/keycast.db, the systemd layout)
# Exit status: 0 backup written, 1 backup failed (nothing is pruned then), 2 bad usage.
set -euo pipefail
umask 077

dir=${1:-${KEYCAST_BACKUP_DIR:-/opt/keycast/backups}}
keep=${KEYCAST_BACKUP_KEEP_DAYS:-7}
case "$keep" in
    ''|*[!0-9]*|0) echo "backup-db.sh: KEYCAST_BACKUP_KEEP_DAYS must be a whole number >= 1" >&2; exit 2 ;;
esac
if [ -n "${KEYCAST_BIN:-}" ]; then
    keycast=$KEYCAST_BIN
elif command -v keycast >/dev/null; then
    keycast=keycast
else
    keycast=/opt/keycast/venv/bin/keycast
fi

export DATABASE_PATH=${DATABASE_PATH:-/opt/keycast/database/keycast.db}

mkdir -p "$dir"
dest="$dir/keycast-$(date -u +%Y%m%d-%H%M%S).db"
partial="$dest.partial"
trap 'rm -f "$partial"' EXIT

if ! "$keycast" backup "$partial"; then
    echo "backup-db.sh: keycast backup failed; no backup written" >&2
    exit 1
fi
# immutable=1: read the copy without creating -wal/-shm files next to it.
if ! result=$(python3 -c '
import pathlib, sqlite3, sys
uri = pathlib.Path(sys.argv[1]).resolve().as_uri() + "?immutable=1"
print(sqlite3.connect(uri, uri=True).execute("PRAGMA integrity_check").fetchone()[0])
' "$partial" 2>&1) || [ "$result" != ok ]; then
    echo "backup-db.sh: the copy failed PRAGMA integrity_check: $result" >&2
    exit 1
fi
mv "$partial" "$dest"
echo "backup written: $dest"

# -mtime +N matches files at least N+1 whole days old.
find "$dir" -maxdepth 1 -type f -name 'keycast-*.db' -mtime "+$((keep - 1))" -print -delete \
    | sed 's/^/pruned: /'

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
# A backup is BACKUP_DIR/keycast-YYYYMMDD-HHMMSS.db (UTC). A name is never reused: when it is
# taken (a second run within the same second, by cron and by hand or two at once) the copy gets
# the next free keycast-YYYYMMDD-HHMMSS-N.db, N = 2, 3, ... The copy is written to a hidden
# temporary file and hard-linked to its name, which fails instead of replacing a file that
# appeared meanwhile. One line on success: "backup written: PATH".
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
stamp=$(date -u +%Y%m%d-%H%M%S)
# Hidden, and unique to this run: a concurrent run never touches it, pruning never sees it.
partial="$dir/.keycast-backup-$$.partial"
rm -f "$partial"    # left by a killed run that had this PID
trap 'rm -f "$partial"' EXIT

# keycast's own "Backed up ... to" line names the temporary file: not shown. Its stderr is.
if ! errors=$("$keycast" backup "$partial" 2>&1 >/dev/null); then
    echo "backup-db.sh: keycast backup failed; no backup written: $errors" >&2
    exit 1
fi
if [ -n "$errors" ]; then
    printf '%s\n' "$errors" >&2
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
# ln (link(2)) fails when the name exists, so a backup is never replaced, even by a run that
# chose the same name at the same moment.
n=1
while :; do
    if [ "$n" = 1 ]; then dest="$dir/keycast-$stamp.db"; else dest="$dir/keycast-$stamp-$n.db"; fi
    if error=$(ln "$partial" "$dest" 2>&1); then
        break
    fi
    if [ ! -e "$dest" ] && [ ! -L "$dest" ]; then
        # Not a name clash: the directory refused the link (a file system without hard links?).
        echo "backup-db.sh: cannot create $dest: $error; no backup written" >&2
        exit 1
    fi
    n=$((n + 1))
    if [ "$n" -gt 100 ]; then
        echo "backup-db.sh: keycast-$stamp.db and 99 numbered copies exist; no backup written" >&2
        exit 1
    fi
done
rm -f "$partial"
echo "backup written: $dest"

# -mtime +N matches files at least N+1 whole days old.
find "$dir" -maxdepth 1 -type f -name 'keycast-*.db' -mtime "+$((keep - 1))" -print -delete \
    | sed 's/^/pruned: /'

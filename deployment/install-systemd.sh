#!/bin/bash
# Installs the keycast signer as a systemd service: the user, the directories with their modes,
# a virtualenv with keycast-tw, the master key and database, the unit, the scripts, then enables
# the unit. Idempotent: run it again to upgrade; existing keys, database and settings are kept.
#
# Usage: sudo deployment/install-systemd.sh [--source DIR] [--master-key FILE] [--user NAME]
#                                           [--root DIR] [--no-venv] [--start]
#   --source DIR       the keycast-tw source tree to pip install (default: this script's tree)
#   --master-key FILE  import this master key (base64 of 32 bytes) instead of generating one
#   --user NAME        the service account (default keycast; created when missing)
#   --root DIR         install under DIR instead of / (staging, tests); skips useradd and systemctl
#   --no-venv          do not create the virtualenv or run `keycast init` (the code is already there)
#   --start            start the service (or restart it) once installed
#
# Layout (the same paths as the unit, supervisor-signer.conf and docs/operations.md):
#   /opt/keycast                 root:root 0755   code; read-only for the service
#   /opt/keycast/venv            root:root        the virtualenv (twistd, keycast)
#   /opt/keycast/master.key      USER:USER 0600   master key (read-only for the service)
#   /opt/keycast/database        USER:USER 0700   keycast.db, WAL, .reload_signal (writable)
#   /opt/keycast/backups         USER:USER 0700   backup-db.sh's output
#   /opt/keycast/scripts         root:root 0755   healthcheck.sh, check-signer.sh (+ the
#                                                  health-endpoint.sh they source), backup-db.sh
#   /var/log/keycast             USER:USER 0750   script logs (the daemon logs to journald)
#   /etc/keycast/keycast.env     root:USER 0640   local settings read by the unit
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source_dir=$(dirname "$here")
master_key=
user=keycast
root=
venv=yes
start=no
while [ $# -gt 0 ]; do
    case "$1" in
        --source) source_dir=${2:?}; shift 2 ;;
        --master-key) master_key=${2:?}; shift 2 ;;
        --user) user=${2:?}; shift 2 ;;
        --root) root=${2:?}; shift 2 ;;
        --no-venv) venv=no; shift ;;
        --start) start=yes; shift ;;
        -h|--help) sed -n '/^# Usage:/,/^# Layout/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install-systemd.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -n "$root" ]; then
    root=$(cd "$root" && pwd)
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-systemd.sh: run as root (it creates a user and chowns directories)" >&2
    exit 1
fi
if [ -n "$master_key" ] && [ ! -s "$master_key" ]; then
    echo "install-systemd.sh: master key $master_key is missing or empty" >&2
    exit 1
fi

if ! id -u "$user" >/dev/null 2>&1; then
    if [ -n "$root" ]; then
        echo "install-systemd.sh: user $user does not exist (not created under --root)" >&2
        exit 1
    fi
    useradd --system --user-group --home-dir /opt/keycast --no-create-home \
        --shell /usr/sbin/nologin "$user"
    echo "created system user $user"
fi
group=$(id -gn "$user")

opt=$root/opt/keycast
install -d -o root -g root -m 0755 "$opt" "$opt/scripts" "$opt/docs" "$root/etc/systemd/system"
install -d -o "$user" -g "$group" -m 0700 "$opt/database" "$opt/backups"
install -d -o "$user" -g "$group" -m 0750 "$root/var/log/keycast"
install -d -o root -g "$group" -m 0750 "$root/etc/keycast"

if [ "$venv" = yes ]; then
    python3 -m venv "$opt/venv"
    "$opt/venv/bin/pip" install --quiet --upgrade "$source_dir"
fi

if [ -n "$master_key" ]; then
    if [ -e "$opt/master.key" ] && ! cmp -s "$master_key" "$opt/master.key"; then
        echo "install-systemd.sh: $opt/master.key exists and differs; refusing to replace it" >&2
        exit 1
    fi
    install -o "$user" -g "$group" -m 0600 "$master_key" "$opt/master.key"
fi
if [ "$venv" = yes ]; then
    # Creates the database and, when none was imported, a new 0600 master key; keeps existing ones.
    # With the daemon's own settings (Cloud KMS instead of a key file, for one), so that an
    # upgrade of a KMS install does not look for a master.key that never existed.
    (
        umask 077
        set -a
        if [ -r "$root/etc/keycast/keycast.env" ]; then
            # shellcheck source=/dev/null
            . "$root/etc/keycast/keycast.env"
        fi
        set +a
        DATABASE_PATH=$opt/database/keycast.db MASTER_KEY_PATH=$opt/master.key \
            "$opt/venv/bin/keycast" init
    )
    if [ -e "$opt/master.key" ]; then
        chown "$user:$group" "$opt/master.key"
        chmod 0600 "$opt/master.key"
    fi
    chown -R "$user:$group" "$opt/database"
fi

install -o root -g root -m 0644 "$here/keycast-signer.service" \
    "$root/etc/systemd/system/keycast-signer.service"
install -o root -g root -m 0755 "$here/healthcheck.sh" "$here/check-signer.sh" \
    "$here/health-endpoint.sh" \
    "$here/backup-db.sh" "$opt/scripts/"
if [ -f "$source_dir/docs/operations.md" ]; then
    install -o root -g root -m 0644 "$source_dir/docs/operations.md" "$opt/docs/"
fi
if [ ! -e "$root/etc/keycast/keycast.env" ]; then
    install -o root -g "$group" -m 0640 /dev/null "$root/etc/keycast/keycast.env"
    cat >"$root/etc/keycast/keycast.env" <<'ENV'
# Local settings of keycast-signer (read by the systemd unit; one VAR=value per line).
# KEYCAST_RELAYS=wss://relay.damus.io,wss://nos.lol,wss://relay.nsec.app
# KEYCAST_LOG_LEVEL=debug
# USE_GCP_KMS=true
# GCP_PROJECT_ID=your-project
ENV
fi

if [ -n "$root" ]; then
    echo "installed under $root (systemctl skipped)"
    exit 0
fi
systemctl daemon-reload
systemctl enable keycast-signer.service
if [ "$start" = yes ]; then
    systemctl restart keycast-signer.service
fi
cat <<EOF_NEXT
keycast-signer installed. Next:
  sudo systemctl start keycast-signer && systemctl status keycast-signer
  curl http://127.0.0.1:8080/ready
Cron (crontab -u $user -e):
  0 2 * * * /opt/keycast/scripts/backup-db.sh >>/var/log/keycast/backup.log 2>&1
  */5 * * * * out=\$(/opt/keycast/scripts/check-signer.sh --state /opt/keycast/database/.check-state) || echo "\$out" | mail -s "Keycast signer alert" admin@example.com
EOF_NEXT

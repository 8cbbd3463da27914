#!/bin/sh
# Cloud Run entrypoint of the keycast signer image (Dockerfile target "cloudrun").
#
# 1. Restore the database from its Litestream replica, unless a database file is already there.
# 2. exec `litestream replicate -exec DAEMON`: Litestream becomes PID 1, runs the daemon as its
#    child, replicates every write while it runs, forwards SIGTERM to it on shutdown and syncs a
#    last time after the daemon has exited.
# The Rust original never restored (reference B22): every Cloud Run start began with an empty
# database. Here a replica that exists but cannot be read stops the start instead.
#
# Usage: run-with-litestream.sh DAEMON-COMMAND [ARG...]   (normally the image's CMD)
# Environment:
#   DATABASE_PATH            the database file, shared with the daemon (default /data/keycast.db)
#   LITESTREAM_REPLICA_URL   the replica, e.g. gcs://BUCKET/keycast-signer/keycast.db (required;
#                            litestream.yml reads it)
#   LITESTREAM_CONFIG        Litestream's configuration (default /etc/litestream.yml)
#   KEYCAST_REQUIRE_REPLICA  "true": refuse to start when the replica does not exist, so a wrong
#                            bucket or path never starts a signer with an empty database (the
#                            service sets it). "false" starts without a replica, which helps only
#                            when a database file is already at DATABASE_PATH. (default "false")
set -eu

if [ $# -eq 0 ]; then
    echo "usage: run-with-litestream.sh DAEMON-COMMAND [ARG...]" >&2
    exit 64
fi
: "${LITESTREAM_REPLICA_URL:?LITESTREAM_REPLICA_URL must name the replica (gcs://BUCKET/PATH)}"
DATABASE_PATH=${DATABASE_PATH:-/data/keycast.db}
export DATABASE_PATH
config=${LITESTREAM_CONFIG:-/etc/litestream.yml}

# litestream -exec takes one string and splits it on whitespace with shell-like quoting. The
# daemon's arguments are plain words; anything else is refused rather than quoted wrongly.
command=
for arg in "$@"; do
    case "$arg" in
        *[[:space:]\"\'\\\$\`]*)
            echo "run-with-litestream.sh: refusing argument with whitespace or quotes: $arg" >&2
            exit 64 ;;
    esac
    command="${command:+$command }$arg"
done

mkdir -p "$(dirname "$DATABASE_PATH")"
case "${KEYCAST_REQUIRE_REPLICA:-false}" in
    true)
        echo "Restoring $DATABASE_PATH from $LITESTREAM_REPLICA_URL (replica required)"
        litestream restore -config "$config" -if-db-not-exists "$DATABASE_PATH" ;;
    false)
        echo "Restoring $DATABASE_PATH from $LITESTREAM_REPLICA_URL if a replica exists"
        litestream restore -config "$config" -if-db-not-exists -if-replica-exists "$DATABASE_PATH" ;;
    *)
        echo "run-with-litestream.sh: KEYCAST_REQUIRE_REPLICA must be true or false" >&2
        exit 64 ;;
esac
exec litestream replicate -config "$config" -exec "$command"

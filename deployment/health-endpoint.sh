#!/bin/sh
# Sourced by healthcheck.sh and check-signer.sh (installed beside them): where the daemon's health
# endpoint is. Running it on its own defines a function and does nothing else.
# shellcheck disable=SC2034  # target_url, target_socket, endpoint, origin: its results

# endpoint_target ENDPOINT: where to dial a daemon whose --health / KEYCAST_HEALTH is ENDPOINT, a
# Twisted server endpoint string, as `keycast check` does (target_from_endpoint in
# keycast_tw/cli/daemon.py): tcp:PORT[:interface=ADDR] and tcp6:... give target_url
# http://ADDR:PORT (no interface, 0.0.0.0 or :: mean loopback: 127.0.0.1, or ::1 for tcp6);
# unix:PATH gives target_socket PATH and target_url http://localhost. Fields are split at colons
# not escaped with a backslash ("\:" is a colon). Returns 1 for an endpoint it cannot dial (ssl:,
# systemd:, a malformed one). tests/test_deployment.py checks it against target_from_endpoint.
endpoint_target() {
    target_url=
    target_socket=
    rest=$1
    kind=
    kind_seen=
    positional=
    positional_seen=
    interface=
    last_field=
    while [ -z "$last_field" ]; do
        field=
        while :; do
            case $rest in
                *:*)
                    piece=${rest%%:*}
                    rest=${rest#*:}
                    case $piece in
                        *\\) field=$field${piece%?}:; continue ;;
                    esac
                    field=$field$piece
                    ;;
                *)
                    field=$field$rest
                    last_field=1
                    ;;
            esac
            break
        done
        if [ -z "$kind_seen" ]; then
            kind=$field
            kind_seen=1
            continue
        fi
        case $field in
            interface=*) interface=${field#interface=} ;;
            *=*) ;;
            *) if [ -z "$positional_seen" ]; then positional=$field; positional_seen=1; fi ;;
        esac
    done
    case $kind in
        unix)
            [ -n "$positional" ] || return 1
            target_socket=$positional
            target_url=http://localhost
            ;;
        tcp|tcp6)
            case $positional in
                ''|*[!0-9]*) return 1 ;;
            esac
            while :; do
                case $positional in
                    0?*) positional=${positional#0} ;;
                    *) break ;;
                esac
            done
            case $interface in
                '') if [ "$kind" = tcp6 ]; then interface=::1; else interface=127.0.0.1; fi ;;
                0.0.0.0) interface=127.0.0.1 ;;
                ::|::0) interface=::1 ;;
            esac
            case $interface in
                *%*) interface=${interface%%[%]*}%25${interface#*[%]} ;;
            esac
            case $interface in
                *:*) interface="[$interface]" ;;
            esac
            target_url=http://$interface:$positional
            ;;
        *) return 1 ;;
    esac
}

# daemon_endpoint: the daemon's health endpoint as the daemon itself chooses it (KEYCAST_HEALTH,
# else PORT on every interface, else the default), in $endpoint, and which setting gave it in
# $origin, for messages.
daemon_endpoint() {
    if [ -n "${KEYCAST_HEALTH:-}" ]; then
        origin=KEYCAST_HEALTH endpoint=$KEYCAST_HEALTH
    elif [ -n "${PORT:-}" ]; then
        origin=PORT endpoint=tcp:$PORT
    else
        origin=default endpoint=tcp:8080:interface=127.0.0.1
    fi
}

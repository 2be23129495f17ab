#!/bin/sh
# vcluster-boot.sh: the START_SCRIPT of a vcluster worker VM (its CONTEXT carries only this).
# Fetches the join script from the controller's join endpoint (VCLUSTER_JOIN_URL) and runs it;
# the join script then trades the one-time VCLUSTER_JOIN_TOKEN for the munge key. An image
# that ships the join script at VCLUSTER_JOIN_SCRIPT (default
# /usr/local/lib/vcluster/vcluster-join.sh) runs that copy instead. Retries while the
# controller does not answer (a restart), up to VCLUSTER_JOIN_WAIT_S (default 120) seconds.
# HTTP with curl, else wget, else bash's /dev/tcp (VCLUSTER_HTTP_CLIENT picks one).
set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
LOG=${VCLUSTER_JOIN_LOG:-/var/log/vcluster-join.log}
log() {
    line="$(date -u '+%Y-%m-%dT%H:%M:%S.%3NZ') vcluster-boot[$$]: $*"
    printf '%s\n' "$line" >&2
    printf '%s\n' "$line" >>"$LOG" 2>/dev/null || true
}
if [ -z "${VCLUSTER_JOIN_URL:-}" ]; then
    for file in /context/context.sh /var/run/one-context/one_env; do
        # shellcheck disable=SC1090
        [ -r "$file" ] && . "$file" && break
    done
fi
[ -n "${VCLUSTER_JOIN_URL:-}" ] || { log "ERROR: VCLUSTER_JOIN_URL is not set: was this VM booted by vcluster?"; exit 1; }
local_copy=${VCLUSTER_JOIN_SCRIPT:-/usr/local/lib/vcluster/vcluster-join.sh}
if [ -r "$local_copy" ]; then
    log "running the image's $local_copy"
    exec sh "$local_copy"
fi
script=${VCLUSTER_RUN_DIR:-/run}/vcluster-join.sh
client=${VCLUSTER_HTTP_CLIENT:-$(command -v curl >/dev/null 2>&1 && echo curl || { command -v wget >/dev/null 2>&1 && echo wget; } || echo bash)}
# get URL OUT: the HTTP status of a GET (000: no answer), body in OUT; curl, wget or bash.
get() {
    if [ "$client" = curl ]; then
        curl -s -m 10 -o "$2" -w '%{http_code}' "$1"
    elif [ "$client" = wget ]; then
        wget -S -q -T 10 -O "$2" "$1" 2>&1 | sed -n 's|^ *HTTP/[0-9.]* \([0-9]*\).*|\1|p' | tail -n 1
    else
        bash -c 'u=${0#http://}; hp=${u%%/*}; h=${hp%:*}; p=${hp##*:}
            exec 3<>"/dev/tcp/$h/$p" || exit 0
            printf "GET /%s HTTP/1.0\r\nHost: %s\r\n\r\n" "${u#*/}" "$hp" >&3
            IFS=" " read -r -t 10 _ status _ <&3 || exit 0
            while IFS= read -r -t 10 l <&3 && [ -n "${l%$'\''\r'\''}" ]; do :; done
            cat <&3 >"$1"; printf %s "$status"' "$1" "$2"
    fi
}
started=$(date +%s)
delay=0.1
while :; do
    status=$( (umask 077; get "$VCLUSTER_JOIN_URL/v1/join.sh" "$script") )
    [ "${status:-000}" = 200 ] && break
    [ $(($(date +%s) - started)) -lt "${VCLUSTER_JOIN_WAIT_S:-120}" ] \
        || { log "ERROR: no join script from $VCLUSTER_JOIN_URL (HTTP ${status:-000}): is the vcluster controller running, its join_address reachable from this VM?"; exit 1; }
    sleep "$delay" 2>/dev/null || sleep 1
    [ "$delay" = 0.1 ] && delay=0.5 || delay=1
done
log "join script fetched from $VCLUSTER_JOIN_URL"
exec sh "$script"

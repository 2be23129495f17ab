#!/bin/sh
# vcluster-join.sh: make this VM the Slurm compute node vcluster booted it to be.
#
# Runs once at boot, as root, after one-context has set up network and hostname: the VM's
# START_SCRIPT (vcluster-boot.sh, in the CONTEXT) fetches it from the controller's join
# endpoint and runs it; the testbed's netns VMs run it the same way. It reads the variables
#   VCLUSTER_NODE       Slurm node name this VM is (required)
#   VCLUSTER_JOIN_URL, VCLUSTER_JOIN_TOKEN
#                       the controller's join endpoint and this boot's one-time token, traded
#                       for the cluster's munge key (POST $VCLUSTER_JOIN_URL/v1/munge-key), or
#   MUNGE_KEY_BASE64    the munge key itself, base64 (an image or test that has it already)
#   SLURM_CONF_SERVER   slurmctld host:port to fetch the config from (configless), or
#   SLURM_CONF_PATH     slurm.conf inside the image (one of the two is required)
#   SET_HOSTNAME, ETH0_IP, VCLUSTER_JOB, VCLUSTER_CLUSTER (optional)
# from its environment or, when VCLUSTER_NODE is not set there, from /context/context.sh or
# one-context's /var/run/one-context/one_env. Then it sets the hostname, installs the munge
# key, starts munged at its default socket, starts slurmd for the node the moment munged
# answers, and waits (bounded) until slurmd runs. Waits are short polls (every
# VCLUSTER_JOIN_POLL_S, 0.05 s) with a bound, not 1 s sleeps: this script is on the job's
# critical path. Log: /var/log/vcluster-join.log (and stderr), times to the millisecond.
# Exit 0 when slurmd runs; 1 with an "ERROR:" line saying what to fix otherwise.
#
# Tunables (environment): VCLUSTER_JOIN_LOG, VCLUSTER_JOIN_WAIT_S (default 30),
# VCLUSTER_JOIN_POLL_S (default 0.05), VCLUSTER_STANDBY_POLL_S (default 0.2),
# VCLUSTER_JOIN_KEY_WAIT_S (default 120),
# VCLUSTER_HTTP_CLIENT (curl, wget or bash; default: the first installed), VCLUSTER_RUN_DIR.
#
# A standby VM (VCLUSTER_STANDBY set, VCLUSTER_NODE empty) is kept in reserve with no node
# name: see "standby VMs" below.

set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

LOG=${VCLUSTER_JOIN_LOG:-/var/log/vcluster-join.log}
WAIT_S=${VCLUSTER_JOIN_WAIT_S:-30}
WAIT_KEY_S=${VCLUSTER_JOIN_KEY_WAIT_S:-120}
POLL_S=${VCLUSTER_JOIN_POLL_S:-0.05}
MUNGE_SOCKET_DIR=/run/munge
MUNGE_SOCKET=$MUNGE_SOCKET_DIR/munge.socket.2
MUNGE_KEY=/etc/munge/munge.key

log() {
    line="$(date -u '+%Y-%m-%dT%H:%M:%S.%3NZ') vcluster-join[$$]: $*"
    printf '%s\n' "$line" >&2
    printf '%s\n' "$line" >>"$LOG" 2>/dev/null || true
}

die() {
    log "ERROR: $*"
    report_error "$*"
    exit 1
}

# --- reporting through OneGate ---------------------------------------------------------------
# Where the VM's CONTEXT has TOKEN=YES (vcluster's workers do), the join says how far it got
# (VCLUSTER_JOIN_STAGE: key, munged, slurmd, joined; standby) and, when it fails, the line
# saying why (VCLUSTER_JOIN_ERROR) in its own USER_TEMPLATE: OneGate's PUT /vm, as
# one-context's READY=YES. The controller reads them with the VM pool, so a failed join fails
# its node at once instead of at Slurm's ResumeTimeout. Best effort: without OneGate the
# join goes on. What is reported is the log's line, never the token or the key.

# onegate_put NAME VALUE: merge NAME=VALUE into this VM's USER_TEMPLATE. The value is made
# one line of printable ASCII within 300 characters with none of OneGate's separators (, [ ]
# " \ end its quoting), then form-encoded; the token travels in a header, never in argv.
# With curl (unless VCLUSTER_HTTP_CLIENT names another client), else bash's /dev/tcp.
onegate_put() {
    [ -n "${ONEGATE_ENDPOINT:-}" ] && [ -n "${VMID:-}" ] || return 0
    token=$(onegate_token) || return 0
    value=$(printf '%s' "$2" | tr '\n\r\t,\133\135' '   ;()' | tr -cd ' -~' | tr -d '"\\' | cut -c 1-300)
    body=$(printf 'data=%s=%s' "$1" "$value" | sed 's/%/%25/g; s/&/%26/g; s/+/%2B/g; s/#/%23/g;
        s/;/%3B/g; s/ /%20/g; s/=/%3D/g; s/^data%3D/data=/')
    if [ "${VCLUSTER_HTTP_CLIENT:-curl}" = curl ] && command -v curl >/dev/null 2>&1; then
        headers=${VCLUSTER_RUN_DIR:-/run}/vcluster-onegate-put.$$
        (umask 077 && printf 'X-ONEGATE-TOKEN: %s\nX-ONEGATE-VMID: %s\n' "$token" "$VMID" \
            >"$headers") || return 0
        printf '%s' "$body" | curl -s -m 5 -o /dev/null -X PUT -H @"$headers" \
            --data-binary @- "${ONEGATE_ENDPOINT%/}/vm"
        rm -f "$headers"
        return 0
    fi
    rest=${ONEGATE_ENDPOINT#http://}
    hostport=${rest%%/*}
    path=
    [ "$rest" = "$hostport" ] || path=/${rest#*/}
    OG_HOST=${hostport%:*} OG_PORT=${hostport##*:} OG_PATH=${path%/} OG_VMID=$VMID \
        OG_TOKEN=$token OG_BODY=$body timeout 5 bash -c '
[ "$OG_HOST" != "$OG_PORT" ] || OG_PORT=80
exec 3<>"/dev/tcp/$OG_HOST/$OG_PORT" || exit 0
printf "PUT %s/vm HTTP/1.0\r\nHost: %s\r\nX-ONEGATE-TOKEN: %s\r\nX-ONEGATE-VMID: %s\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s" \
    "$OG_PATH" "$OG_HOST" "$OG_TOKEN" "$OG_VMID" "${#OG_BODY}" "$OG_BODY" >&3
cat <&3 >/dev/null' 2>/dev/null
    return 0
}

# report_stage STAGE: in the background (off the join's path), one report at a time, in order.
report_stage() {
    [ -n "${ONEGATE_ENDPOINT:-}" ] || return 0
    [ -z "${STAGE_PID:-}" ] || wait "$STAGE_PID" 2>/dev/null
    onegate_put VCLUSTER_JOIN_STAGE "$1" </dev/null >/dev/null 2>&1 &
    STAGE_PID=$!
}

# report_error LINE: before the script exits, after the stage reports still on their way.
report_error() {
    [ -z "${STAGE_PID:-}" ] || wait "$STAGE_PID" 2>/dev/null
    STAGE_PID=
    onegate_put VCLUSTER_JOIN_ERROR "$1" </dev/null >/dev/null 2>&1
}

# wait_until SECONDS COMMAND...: run COMMAND every POLL_S until it succeeds (0) or SECONDS
# passed (1). A sleep that takes no fraction (an old busybox) sleeps 1 s: slower, still right.
wait_until() {
    limit_s=$1
    shift
    started=$(date +%s)
    until "$@"; do
        [ $(($(date +%s) - started)) -lt "$limit_s" ] || return 1
        sleep "$POLL_S" 2>/dev/null || sleep 1
    done
}

process_gone() {
    ! kill -0 "$1" 2>/dev/null
}

load_context() {
    if [ -n "${VCLUSTER_NODE:-}" ]; then
        log "context from the environment"
        return 0
    fi
    for file in /context/context.sh /var/run/one-context/one_env; do
        if [ -r "$file" ]; then
            # shellcheck disable=SC1090
            . "$file"
            log "context from $file"
            return 0
        fi
    done
    log "no context file found (/context/context.sh, /var/run/one-context/one_env)"
}

check_context() {
    [ -n "${VCLUSTER_NODE:-}" ] || die "VCLUSTER_NODE is not set: this VM's CONTEXT must name its Slurm node (vcluster sets it; was the VM booted by vcluster?)"
    # a standby VM got its key (and used its token up) before it was handed this node
    if [ -z "${MUNGED_STARTED:-}" ] && [ -z "${MUNGE_KEY_BASE64:-}" ] && { [ -z "${VCLUSTER_JOIN_URL:-}" ] || [ -z "${VCLUSTER_JOIN_TOKEN:-}" ]; }; then
        die "neither VCLUSTER_JOIN_URL with VCLUSTER_JOIN_TOKEN nor MUNGE_KEY_BASE64 is set: this VM cannot get the cluster's munge key (vcluster sets the first two; was the VM booted by vcluster?)"
    fi
    if [ -z "${SLURM_CONF_SERVER:-}" ] && [ -z "${SLURM_CONF_PATH:-}" ]; then
        die "neither SLURM_CONF_SERVER nor SLURM_CONF_PATH is set: the CONTEXT must give the slurmctld host:port (configless) or a slurm.conf path in the image"
    fi
    if [ -n "${SLURM_CONF_PATH:-}" ] && [ ! -r "$SLURM_CONF_PATH" ]; then
        die "SLURM_CONF_PATH $SLURM_CONF_PATH is not readable in this VM: fix the image or use SLURM_CONF_SERVER (configless)"
    fi
    command -v munged >/dev/null 2>&1 || die "munged is not installed in this image: install munge (same as on the controller)"
    command -v slurmd >/dev/null 2>&1 || die "slurmd is not installed in this image: install slurmd of the controller's Slurm version"
}

set_hostname() {
    wanted=${SET_HOSTNAME:-$VCLUSTER_NODE}
    current=$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname)
    if [ "$current" != "$wanted" ]; then
        hostname "$wanted" 2>/dev/null || printf '%s\n' "$wanted" >/proc/sys/kernel/hostname \
            || die "cannot set the hostname to $wanted"
        printf '%s\n' "$wanted" >/etc/hostname 2>/dev/null || true
        log "hostname set to $wanted"
    fi
    if [ -n "${ETH0_IP:-}" ] && ! grep -Eq "[[:space:]]$wanted([[:space:]]|\$)" /etc/hosts 2>/dev/null; then
        printf '%s\t%s\n' "$ETH0_IP" "$wanted" >>/etc/hosts || log "could not add $wanted to /etc/hosts"
    fi
}

# post URL DATA OUT: the HTTP status of a POST of DATA (000: no answer), body in OUT; with
# curl, wget or bash's /dev/tcp. DATA goes through stdin or a 0600 file, never argv.
post() {
    client=${VCLUSTER_HTTP_CLIENT:-$(command -v curl >/dev/null 2>&1 && echo curl || { command -v wget >/dev/null 2>&1 && echo wget; } || echo bash)}
    if [ "$client" = curl ]; then
        printf '%s' "$2" | curl -s -m 10 -o "$3" -w '%{http_code}' --data-binary @- "$1"
    elif [ "$client" = wget ]; then
        (umask 077 && printf '%s' "$2" >"$3.data")
        wget -S -q -T 10 -O "$3" --post-file="$3.data" "$1" 2>&1 \
            | sed -n 's|^ *HTTP/[0-9.]* \([0-9]*\).*|\1|p' | tail -n 1
        rm -f "$3.data"
    else
        VCLUSTER_POST_DATA=$2 bash -c 'u=${0#http://}; hp=${u%%/*}; h=${hp%:*}; p=${hp##*:}
            exec 3<>"/dev/tcp/$h/$p" || exit 0
            printf "POST /%s HTTP/1.0\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s" \
                "${u#*/}" "$hp" "${#VCLUSTER_POST_DATA}" "$VCLUSTER_POST_DATA" >&3
            IFS=" " read -r -t 10 _ status _ <&3 || exit 0
            while IFS= read -r -t 10 l <&3 && [ -n "${l%$'\''\r'\''}" ]; do :; done
            cat <&3 >"$1"; printf %s "$status"' "$1" "$3"
    fi
}

# MUNGE_KEY_BASE64 from the join endpoint, for this boot's token (used up by the answer).
# A 503 or no answer (the controller restarting, the VM's address not known to OpenNebula
# yet) is asked again, 0.1 s then up to 1 s apart, within WAIT_KEY_S; a 403 is final.
fetch_munge_key() {
    [ -n "${MUNGE_KEY_BASE64:-}" ] && return 0
    answer=${VCLUSTER_RUN_DIR:-/run}/vcluster-munge-key.$$
    started=$(date +%s)
    delay=0.1
    while :; do
        status=$( (umask 077; post "$VCLUSTER_JOIN_URL/v1/munge-key" "$VCLUSTER_JOIN_TOKEN" "$answer") )
        case "${status:-000}" in
            200) MUNGE_KEY_BASE64=$(cat "$answer"); rm -f "$answer"; break ;;
            400|403|404) reason=$(head -c 300 "$answer" 2>/dev/null); rm -f "$answer"
                die "the controller at $VCLUSTER_JOIN_URL refused the munge key (HTTP $status): ${reason:-no reason given}" ;;
        esac
        rm -f "$answer"
        [ $(($(date +%s) - started)) -lt "$WAIT_KEY_S" ] \
            || die "no munge key from $VCLUSTER_JOIN_URL within $WAIT_KEY_S s (last HTTP ${status:-000}): is the vcluster controller running and its join_address reachable from this VM?"
        sleep "$delay" 2>/dev/null || sleep 1
        [ "$delay" = 0.1 ] && delay=0.5 || delay=1
    done
    unset VCLUSTER_JOIN_TOKEN
    log "munge key received from $VCLUSTER_JOIN_URL"
}

install_munge_key() {
    mkdir -p /etc/munge || die "cannot create /etc/munge"
    tmp_key=$MUNGE_KEY.vcluster.$$
    (umask 077 && printf '%s' "$MUNGE_KEY_BASE64" | base64 -d >"$tmp_key") 2>/dev/null \
        || { rm -f "$tmp_key"; die "the munge key is not valid base64: give the cluster's munge key, base64-encoded"; }
    size=$(wc -c <"$tmp_key" | tr -d ' ')
    if [ "$size" -lt 32 ]; then
        rm -f "$tmp_key"
        die "the munge key received has $size bytes; munge needs at least 32"
    fi
    chmod 0400 "$tmp_key"
    if id munge >/dev/null 2>&1; then
        chown munge:munge "$tmp_key" || die "cannot give $MUNGE_KEY to user munge"
    fi
    mv -f "$tmp_key" "$MUNGE_KEY" || die "cannot install $MUNGE_KEY"
    unset MUNGE_KEY_BASE64
    log "munge key installed ($size bytes)"
}

as_munge() {
    if ! id munge >/dev/null 2>&1; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u munge -- "$@"
    else
        su -s /bin/sh -c 'exec "$0" "$@"' munge "$@"
    fi
}

start_munged() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl restart munge >>"$LOG" 2>&1 || die "systemctl restart munge failed: see journalctl -u munge"
    else
        if [ -r "$MUNGE_SOCKET_DIR/munged.pid" ]; then
            old=$(cat "$MUNGE_SOCKET_DIR/munged.pid")
            if [ -n "$old" ] && kill "$old" 2>/dev/null; then
                wait_until 5 process_gone "$old" || log "munged pid $old did not exit within 5 s"
                log "stopped the munged started before the key was installed (pid $old)"
            fi
        fi
        mkdir -p "$MUNGE_SOCKET_DIR" && chmod 0755 "$MUNGE_SOCKET_DIR" || die "cannot create $MUNGE_SOCKET_DIR"
        if id munge >/dev/null 2>&1; then
            chown munge:munge "$MUNGE_SOCKET_DIR" || die "cannot give $MUNGE_SOCKET_DIR to user munge"
        fi
        as_munge munged </dev/null >>"$LOG" 2>&1 || die "munged did not start: see /var/log/munge/munged.log and $LOG"
    fi
    wait_until "$WAIT_S" test -S "$MUNGE_SOCKET" \
        || die "munged socket $MUNGE_SOCKET did not appear within $WAIT_S s: see /var/log/munge/munged.log"
    log "munged runs at $MUNGE_SOCKET"
}

# A credential that round-trips: checked once slurmd is on its way (it needs the same).
check_munge() {
    if command -v munge >/dev/null 2>&1 && command -v unmunge >/dev/null 2>&1; then
        munge -n </dev/null 2>>"$LOG" | unmunge >/dev/null 2>>"$LOG" \
            || die "munged answers but a credential does not decode: see /var/log/munge/munged.log"
    fi
}

# PIDs of the slurmd processes of this VM (same network namespace: testbed VMs share one
# process table with the host and with each other). Shell builtins only for each process
# (no fork per process: the scan runs every POLL_S).
SELF_NET=$(readlink /proc/self/ns/net 2>/dev/null)
slurmd_pids() {
    for dir in /proc/[0-9]*; do
        comm=
        { read -r comm <"$dir/comm"; } 2>/dev/null
        [ "$comm" = slurmd ] || continue
        [ "$(readlink "$dir/ns/net" 2>/dev/null)" = "$SELF_NET" ] || continue
        printf '%s ' "${dir#/proc/}"
    done
}

slurmd_runs() {
    [ -n "$(slurmd_pids)" ]
}

# True when no slurmd of this VM lives. The processes seen last are looked at first (no
# scan); once they are gone the scan looks again (slurmd forks while it daemonizes).
slurmd_gone() {
    for pid in $SLURMD_PIDS; do
        kill -0 "$pid" 2>/dev/null && return 1
    done
    SLURMD_PIDS=$(slurmd_pids)
    [ -z "$SLURMD_PIDS" ]
}

start_slurmd() {
    SLURMD_PIDS=$(slurmd_pids)
    if [ -n "$SLURMD_PIDS" ]; then
        log "slurmd already runs in this VM (pid ${SLURMD_PIDS% }); leaving it"
        return 0
    fi
    if [ -n "${SLURM_CONF_PATH:-}" ]; then
        set -- -f "$SLURM_CONF_PATH"
    else
        set -- --conf-server "$SLURM_CONF_SERVER"
    fi
    log "starting: slurmd -b $* -N $VCLUSTER_NODE"
    log_lines=$(wc -l <"$LOG" 2>/dev/null || echo 0)
    slurmd -b "$@" -N "$VCLUSTER_NODE" </dev/null >>"$LOG" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ]; then
        first_error=$(tail -n "+$((log_lines + 1))" "$LOG" 2>/dev/null | grep -m 1 'error:' | sed 's/^slurmd: error: //')
        if [ -n "${SLURM_CONF_PATH:-}" ]; then
            hint="check $SLURM_CONF_PATH"
        else
            hint="check SLURM_CONF_SERVER=$SLURM_CONF_SERVER and that slurmctld runs there with SlurmctldParameters=enable_configless"
        fi
        die "slurmd for $VCLUSTER_NODE did not start (exit $rc): ${first_error:-no error printed}; $hint"
    fi
    wait_until "$WAIT_S" slurmd_runs \
        || die "slurmd for $VCLUSTER_NODE is not running $WAIT_S s after start: see $LOG and the slurmd log"
    SLURMD_PIDS=$(slurmd_pids)
    log "slurmd started for node $VCLUSTER_NODE (pid ${SLURMD_PIDS% })"
}

# A slurmd that dies at once (a config it cannot use) does so within moments of its start:
# ten looks, POLL_S apart, after the munge check.
check_slurmd_stays() {
    looks=0
    while [ "$looks" -lt 10 ]; do
        slurmd_gone && die "slurmd for $VCLUSTER_NODE exited right after it started: see $LOG and the slurmd log"
        sleep "$POLL_S" 2>/dev/null || sleep 1
        looks=$((looks + 1))
    done
    log "slurmd runs for node $VCLUSTER_NODE"
}

# --- standby VMs ----------------------------------------------------------------------------
# With VCLUSTER_STANDBY=<class> and no VCLUSTER_NODE, the VM is booted ahead of any job. It
# installs the munge key and starts munged now, then returns (so that one-context reports
# READY) while a background process asks OneGate (GET $ONEGATE_ENDPOINT/vm, with the VM's
# token) every VCLUSTER_STANDBY_POLL_S until the controller has written VCLUSTER_NODE (and
# VCLUSTER_JOB) into the VM's user template; then it joins as that node. The controller sets
# the node's NodeAddr before it writes the name, so slurmd never registers too early.

STANDBY_POLL_S=${VCLUSTER_STANDBY_POLL_S:-0.2}

onegate_token() {
    if [ -n "${TOKENTXT:-}" ]; then
        printf '%s' "$TOKENTXT"
        return 0
    fi
    for file in /context/token.txt /var/run/one-context/token.txt /mnt/context/token.txt; do
        if [ -r "$file" ]; then
            tr -d '\n' <"$file"
            return 0
        fi
    done
    return 1
}

# The VM's own record as OneGate's JSON (HTTP headers may precede it). The token never goes
# on a command line: curl reads it from a root-only header file, bash's /dev/tcp from its
# environment.
onegate_vm() {
    if command -v curl >/dev/null 2>&1; then
        curl -sf -m 5 -H @"$ONEGATE_HEADERS" "${ONEGATE_ENDPOINT%/}/vm"
        return
    fi
    rest=${ONEGATE_ENDPOINT#http://}
    hostport=${rest%%/*}
    path=
    [ "$rest" = "$hostport" ] || path=/${rest#*/}
    host=${hostport%:*}
    port=${hostport##*:}
    [ "$host" != "$hostport" ] || port=80
    OG_HOST=$host OG_PORT=$port OG_PATH=${path%/} OG_VMID=$VMID OG_TOKEN=$ONEGATE_TOKEN \
        timeout 5 bash -c 'exec 3<>"/dev/tcp/$OG_HOST/$OG_PORT" || exit 1
printf "GET %s/vm HTTP/1.0\r\nHost: %s\r\nX-ONEGATE-TOKEN: %s\r\nX-ONEGATE-VMID: %s\r\n\r\n" \
    "$OG_PATH" "$OG_HOST" "$OG_TOKEN" "$OG_VMID" >&3
cat <&3'
}

# json_attr NAME: the string value of NAME in the JSON on stdin ("" if absent).
json_attr() {
    sed -n "s/.*\"$1\" *: *\"\([^\"]*\)\".*/\1/p" | head -n 1
}

# slurmctld takes a powering-up node's registration only if the boot time it computes (its
# own clock at the registration, whole seconds, minus the uptime slurmd reports) is not before
# the power-up request; a registration that comes before the request (the node still powered
# down, ReturnToService=2) is taken as is. `slurmd -b` reports its uptime as whole seconds
# since its start: by the wall clock from Slurm 24.05 on (time(NULL)), by /proc/uptime before
# (sysinfo). Started early enough in a second of that clock, slurmd registers within the
# same second and reports an uptime of 0: slurmctld then takes the registration's own
# arrival, after the request, as the boot time, whenever Slurm asks for the power-up. So
# slurmd starts at once when that clock's second is less than SLURMD_START_BEFORE (0.6) old,
# else just after the next second begins (0.4 s at most). Without a fraction of a second to
# read (no `date +%N`), it starts in a later second than VCLUSTER_HANDED_AT, as before.
SLURMD_START_BEFORE=${VCLUSTER_SLURMD_START_BEFORE:-60}  # hundredths of a second

slurmd_clock() {
    version=$(slurmd -V 2>/dev/null | grep -o '[0-9][0-9]*\.[0-9][0-9]*' | head -n 1)
    major=${version%%.*}
    minor=${version#*.}
    case "$major$minor" in ''|*[!0-9]*) echo uptime; return ;; esac
    if [ "$major" -gt 24 ] || { [ "$major" -eq 24 ] && [ "$minor" -ge 5 ]; }; then
        echo wall
    else
        echo uptime
    fi
}

# Hundredths of a second into the current second of slurmd's clock ("" if unknown).
clock_fraction() {
    if [ "$SLURMD_CLOCK" = wall ]; then
        ns=$(date +%N 2>/dev/null)
        case $ns in [0-9][0-9]*) printf '%s' "$ns" | cut -c1-2 ;; esac
    else
        up=$(cut -d' ' -f1 /proc/uptime 2>/dev/null)
        case $up in *.[0-9][0-9]*) printf '%s' "${up#*.}" | cut -c1-2 ;; esac
    fi
}

slurmd_same_second() {
    handed_s=$1
    frac=$(clock_fraction)
    frac=${frac#0}
    if [ -n "$frac" ] && { [ "$frac" -lt "$SLURMD_START_BEFORE" ] \
            || sleep "0.$(printf '%02d' $((102 - frac)))" 2>/dev/null; }; then
        log "slurmd starts $(clock_fraction)/100 s into a second of its clock ($SLURMD_CLOCK)"
        return 0
    fi
    case $handed_s in ''|*[!0-9]*) handed_s=$(date +%s) ;; esac
    waits=0
    while [ "$(date +%s)" -le "$handed_s" ] && [ "$waits" -lt 100 ]; do
        sleep 0.02 2>/dev/null || sleep 1
        waits=$((waits + 1))
    done
}

standby_wait_for_node() {
    while :; do
        record=$(onegate_vm 2>/dev/null) || record=
        node=$(printf '%s' "$record" | json_attr VCLUSTER_NODE)
        if [ -n "$node" ]; then
            case $node in
                *[!A-Za-z0-9._-]*) die "OneGate gave an invalid node name: $node" ;;
            esac
            VCLUSTER_NODE=$node
            VCLUSTER_JOB=$(printf '%s' "$record" | json_attr VCLUSTER_JOB)
            log "standby VM handed to node $VCLUSTER_NODE (job ${VCLUSTER_JOB:-none})"
            rm -f "$ONEGATE_HEADERS"
            slurmd_same_second "$(printf '%s' "$record" | json_attr VCLUSTER_HANDED_AT)"
            return 0
        fi
        sleep "$STANDBY_POLL_S" 2>/dev/null || sleep 1
    done
}

standby_reserve() {
    [ -n "${ONEGATE_ENDPOINT:-}" ] && [ -n "${VMID:-}" ] \
        || die "standby VM without ONEGATE_ENDPOINT/VMID: its template's CONTEXT needs TOKEN=YES and oned a OneGate endpoint"
    ONEGATE_TOKEN=$(onegate_token) || die "standby VM without a OneGate token (token.txt): CONTEXT needs TOKEN=YES"
    ONEGATE_HEADERS=/run/vcluster-onegate.headers
    (umask 077 && printf 'X-ONEGATE-TOKEN: %s\nX-ONEGATE-VMID: %s\n' "$ONEGATE_TOKEN" "$VMID" \
        >"$ONEGATE_HEADERS") || die "cannot write $ONEGATE_HEADERS"
    report_stage key
    fetch_munge_key
    install_munge_key
    report_stage munged
    start_munged
    MUNGED_STARTED=1
    report_stage standby
    SLURMD_CLOCK=$(slurmd_clock)
    log "standby VM of class $VCLUSTER_STANDBY: munged runs; waiting for a node name from $ONEGATE_ENDPOINT"
    { standby_wait_for_node && join_node; } </dev/null >/dev/null 2>&1 &
    exit 0
}

# --- joining -----------------------------------------------------------------------------------

join_node() {
    log "joining as node ${VCLUSTER_NODE:-?} of cluster ${VCLUSTER_CLUSTER:-?} (job ${VCLUSTER_JOB:-none})"
    check_context
    set_hostname
    if [ -z "${MUNGED_STARTED:-}" ]; then
        report_stage key
        fetch_munge_key
        install_munge_key
        report_stage munged
        start_munged
    fi
    report_stage slurmd
    start_slurmd
    check_munge
    check_slurmd_stays
    log "done: node $VCLUSTER_NODE joined"
    report_stage joined  # not waited for: the node's registration is what counts
}

mkdir -p "$(dirname "$LOG")" 2>/dev/null || true
load_context
if [ -z "${VCLUSTER_NODE:-}" ] && [ -n "${VCLUSTER_STANDBY:-}" ]; then
    standby_reserve
fi
join_node
exit 0

#!/bin/sh
# PrologSlurmctld of the reference bridge: wait until every node of the job has registered
# (no longer POWERING_UP / NOT_RESPONDING), polling every 0.25 s, at most REFBRIDGE_WAIT_S
# (default 120); exit 1 (Slurm requeues the job) when they do not.
set -u
SCONTROL=${REFBRIDGE_SCONTROL:-scontrol}
limit=$(( $(date +%s) + ${REFBRIDGE_WAIT_S:-120} ))
for node in $("$SCONTROL" show hostnames "$SLURM_JOB_NODELIST"); do
    while :; do
        state=$("$SCONTROL" show node "$node" -o | sed -n 's/.* State=\([^ ]*\).*/\1/p')
        case "$state" in
            *POWERING_UP*|*NOT_RESPONDING*|*POWERED_DOWN*|"") ;;
            *) break ;;
        esac
        [ "$(date +%s)" -lt "$limit" ] || { echo "node $node not up: $state" >&2; exit 1; }
        sleep 0.25
    done
done
exit 0

#!/bin/sh
# EpilogSlurmctld of the reference bridge: power the job's nodes down (SuspendProgram then
# terminates their VMs); ASAP drains them so that no other job lands on them meanwhile.
set -u
exec "${REFBRIDGE_SCONTROL:-scontrol}" update nodename="$SLURM_JOB_NODELIST" state=POWER_DOWN_ASAP

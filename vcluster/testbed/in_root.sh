#!/bin/sh
# Runs a program of another Slurm installation (a Debian root made by debootstrap) chrooted in
# that root, inside a private mount namespace of its own: what a machine running that Debian
# release would run. Used by the testbed for slurmctld and for netns VMs whose image is a root.
#
#   unshare --mount --propagation private sh in_root.sh ROOT [SHARED_PATH...] -- PROGRAM [ARG...]
#
# In the namespace: /proc, /dev and /sys as on the host, each SHARED_PATH of the host (the
# testbed's state directory, /etc/passwd, ...) bind-mounted at the same path inside ROOT, the
# way a cluster shares NFS and user accounts, and the host's whole tree at ROOT/.host so that a
# program of the host (a vcluster hook that slurmctld runs) can be reached with
# `chroot /.host PROGRAM`. Every mount lives in the private namespace only: it vanishes with
# the namespace's last process, and nothing propagates back to the host.
set -eu
root=$1
shift
[ -d "$root/usr/lib" ] || { echo "in_root.sh: $root is not a Debian root" >&2; exit 2; }
mkdir -p "$root/.host"
mount --rbind / "$root/.host"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    shared=$1
    shift
    if [ -d "$shared" ]; then
        mkdir -p "$root$shared"
    elif [ -e "$shared" ]; then
        mkdir -p "$root$(dirname "$shared")"
        [ -e "$root$shared" ] || : > "$root$shared"
    else
        echo "in_root.sh: shared path $shared does not exist" >&2
        exit 2
    fi
    mount --bind "$shared" "$root$shared"
done
[ "${1:-}" = "--" ] || { echo "in_root.sh: no -- before the program" >&2; exit 2; }
shift
exec chroot "$root" "$@"

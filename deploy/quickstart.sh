#!/usr/bin/env bash
# Quick start on one machine (Debian 12 or 13, root): install what is missing, bring up the
# testbed site (local Slurm + OpenNebula-compatible cloud with namespace VMs + the controller),
# and run a two-node job on freshly booted VMs. The site stays up afterwards; `vcluster testbed
# down` removes it. Options go to `vcluster testbed up`: `--slurm 24.11` (or 22.05) runs the
# other Debian release's Slurm from a root built once with debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
vcluster testbed up "$@"
export VCLUSTER_CONFIG=/var/lib/vcluster-testbed/vc/vcluster.toml
export SLURM_CONF=/var/lib/vcluster-testbed/vc/slurm/slurm.conf
# the site's Slurm commands (the other release's, from its root, with --slurm)
export PATH="$(sed -n 's/^bin_dir = "\(.*\)"$/\1/p' "$VCLUSTER_CONFIG"):$PATH"
out=$(mktemp -d /tmp/vcluster-quickstart.XXXXXX)
chmod 755 "$out"
echo
echo "\$ fsub -N2 --wait --output=$out/hello.out --wrap 'srun hostname'"
fsub -N2 --wait --output="$out/hello.out" --wrap 'srun hostname'
echo
echo "--- $out/hello.out (one line per VM booted for the job) ---"
cat "$out/hello.out"
echo
vcluster status
echo
echo "The site is still up: try fsub yourself with the two exports above, and"
echo "'vcluster testbed down' to remove it."

#!/usr/bin/env bash
# Installs what vcluster, its testbed and its tests need on Debian 12 (run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
for cmd in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge ip:iproute2 \
           nsenter:util-linux; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd##*:}")
done
# the system's Python: the tests install fsub for an ordinary user from it, as a site would
[ -x /usr/bin/python3 ] || need+=(python3)
# PostgreSQL's server, for the tests only: they run a private one (initdb, a unix socket)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi
python3 -m pip install -q --disable-pip-version-check -e '.[dev,postgres]'

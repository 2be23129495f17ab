#!/usr/bin/env bash
# The test command: installs what is missing, then lint, types, unit tests and the
# integration tests (real slurmctld/slurmd/munge, the testbed cloud with namespace VMs), the
# end-to-end scenarios once per Slurm: the host's and the other Debian release's (a root built
# with debootstrap and kept under /var/cache/vcluster-testbed/roots). Root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
py=$(bash deploy/install-deps.sh --print-python)
"$py" -m ruff check vcluster
"$py" -m mypy vcluster
"$py" -m vcluster testbed slurm-root
"$py" -m pytest -q --integration --slurm=both "$@"

#!/usr/bin/env bash
# The test command: installs what is missing, then lint, types, unit tests and the
# integration tests (real slurmctld/slurmd/munge, the testbed cloud with namespace VMs). Root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
ruff check vcluster
mypy vcluster
python3 -m pytest -q --integration "$@"

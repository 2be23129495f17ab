#!/usr/bin/env bash
# The test command: lint, types, unit tests and the integration tests (real Slurm + testbed).
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check vcluster
mypy vcluster
python3 -m pytest -q --integration "$@"

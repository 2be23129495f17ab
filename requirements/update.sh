#!/usr/bin/env bash
# Regenerates requirements/constraints.txt: the exact versions of vcluster's runtime, dev and
# postgres dependencies that the checks passed with.
#
#   bash requirements/update.sh [PYTHON [PYTHON...]]     (default: python3)
#
# In a new virtual environment of the first PYTHON it installs the NEWEST versions that the
# ranges in pyproject.toml allow (no constraints), runs `ruff check vcluster`, `mypy vcluster`
# and the unit tests, and only if all pass writes `pip freeze` to constraints.txt. Every further
# PYTHON (e.g. Debian 13's /usr/bin/python3, 3.13) then gets a new venv installed WITH the new
# constraints and runs the unit tests, so the file is known to resolve there too.
# No root needed; nothing outside a temporary directory is touched but constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=requirements/constraints.txt
[ $# -gt 0 ] || set -- python3
work=$(mktemp -d /tmp/vcluster-constraints.XXXXXX)
trap 'rm -rf "$work"' EXIT
# A machine-wide constraint file (PIP_CONSTRAINT, /etc/pip.conf) must not cap this resolution.
export PIP_CONSTRAINT='' PIP_DISABLE_PIP_VERSION_CHECK=1

check() {  # VENV: the checks the constraints vouch for, run from the repository
  local venv=$1
  (cd "$repo" && "$venv/bin/ruff" check vcluster && "$venv/bin/mypy" vcluster \
     && "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/unit)
}

first=$1; shift
echo "== newest allowed versions, $("$first" --version)"
"$first" -m venv "$work/new"
"$work/new/bin/python" -m pip install -q --upgrade pip
"$work/new/bin/python" -m pip install -q -e "$repo[dev,postgres]"
check "$work/new"
{
  echo "# The exact versions vcluster's checks (ruff, mypy, unit tests) passed with: runtime,"
  echo "# dev and postgres dependencies, the newest that pyproject.toml's ranges allowed then."
  echo "# Used by deploy/install-deps.sh: pip install -c requirements/constraints.txt -e '.[dev,postgres]'"
  echo "# Regenerate (newest allowed versions, checked; more Pythons are verified too):"
  echo "#   bash requirements/update.sh python3 /usr/bin/python3"
  echo "# Made with $("$first" --version) on $(date -u +%Y-%m-%d)."
  "$work/new/bin/python" -m pip freeze --exclude-editable | LC_ALL=C sort -f
} >"$work/constraints.txt"

for python in "$@"; do
  echo "== with the new constraints, $("$python" --version) ($python)"
  "$python" -m venv "$work/again"
  "$work/again/bin/python" -m pip install -q --upgrade pip
  "$work/again/bin/python" -m pip install -q -c "$work/constraints.txt" -e "$repo[dev,postgres]"
  check "$work/again"
  rm -rf "$work/again"
done
cp "$work/constraints.txt" "$out"
echo "wrote $out ($(grep -vc '^#' "$out") packages)"

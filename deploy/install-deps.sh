#!/usr/bin/env bash
# Installs what vcluster, its testbed and its tests need on Debian 12 (bookworm, Slurm 22.05)
# or Debian 13 (trixie, Slurm 24.11), as root: only what is missing, so a second run changes
# nothing, and quietly (apt's output is shown only if it fails).
#
#   bash deploy/install-deps.sh                  install
#   bash deploy/install-deps.sh --print-python   print the Python vcluster is installed into
#                                                (what tests/run.sh runs ruff, mypy, pytest with)
#
# The Python package, with its dev and postgres extras, gets exactly the versions in
# requirements/constraints.txt (those the checks passed with; requirements/update.sh
# regenerates them). It goes into `python3` as found on PATH (an active virtual environment,
# or pyenv's Python, is used as it is). A Python that is "externally managed" (PEP 668: Debian
# 12's and 13's own /usr/bin/python3) refuses pip installs, and --break-system-packages would
# mix pip's packages with apt's (pip cannot replace an apt-installed package such as
# python3-typing-extensions, it has no RECORD); so there vcluster goes into a virtual
# environment of its own, $VCLUSTER_VENV (default /opt/vcluster/venv), whose commands
# (vcluster, fsub, vcluster-*, ruff, mypy, pytest) are linked into /usr/local/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
venv=${VCLUSTER_VENV:-/opt/vcluster/venv}

externally_managed() {  # PYTHON: true if pip may not install into it (PEP 668)
  "$1" - <<'EOF' 2>/dev/null
import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.isfile(marker) else 1)
EOF
}

target_python() {  # the interpreter vcluster is (to be) installed into
  if command -v python3 >/dev/null 2>&1 && ! externally_managed python3; then
    python3 -c "import sys; print(sys.executable)"
  else
    echo "$venv/bin/python"
  fi
}

if [ "${1:-}" = --print-python ]; then
  target_python
  exit 0
fi

# Debian packages, by a command each provides (same names on Debian 12 and 13); gcc builds
# the C hook front (vcluster hook-front) that the testbed runs as Slurm's hooks.
need=()
for cmd in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge \
           ip:iproute2 nsenter:util-linux unshare:util-linux runuser:util-linux \
           mount:mount hostname:hostname useradd:passwd \
           debootstrap:debootstrap cc:gcc; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd##*:}")
done
# The system's Python: the tests install fsub for an ordinary user with it (a venv of
# /usr/bin/python3), as a site would; python3-venv brings ensurepip, which `-m venv` needs.
[ -x /usr/bin/python3 ] || need+=(python3)
/usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# PostgreSQL's server, for the tests only: they run a private one (initdb, a unix socket)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  echo "install-deps: apt-get install ${need[*]}"
  log=$(mktemp /tmp/vcluster-install-deps.XXXXXX)
  # DPkg::Lock::Timeout: wait for another apt run to end instead of failing at once
  if ! { apt-get update -q \
         && apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 \
              "${need[@]}"; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "install-deps: apt-get failed; whole output in $log" >&2
    exit 1
  fi
  rm -f "$log"
fi

python=$(target_python)
if [ "$python" = "$venv/bin/python" ] && [ ! -x "$python" ]; then
  echo "install-deps: python3 is externally managed (PEP 668): installing into $venv"
  "$(command -v python3)" -m venv "$venv"
  # Debian 12's bundled pip (23.0) still builds sdists such as python-hostlist's the legacy way
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
fi
"$python" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
  -c requirements/constraints.txt -e '.[dev,postgres]'
if [ "$python" = "$venv/bin/python" ]; then
  for cmd in "$venv"/bin/vcluster "$venv"/bin/vcluster-* "$venv"/bin/fsub \
             "$venv"/bin/ruff "$venv"/bin/mypy "$venv"/bin/pytest; do
    ln -sfn "$cmd" "/usr/local/bin/${cmd##*/}"
  done
fi

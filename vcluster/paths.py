"""Default locations, and the rule that finds the config file, with no imports.

Why it exists apart from :mod:`vcluster.config`: the programs slurmctld runs read only where
the controller's socket and the log are (:mod:`vcluster.hook_client`), and importing the
config module (its dataclasses and validation) would cost each of them about 10 ms of CPU.
So the defaults have this one home, and both read them from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_CONFIG_PATH = "/etc/vcluster/vcluster.toml"
DEFAULT_STATE_DIR = "/var/lib/vcluster"
"""``controller.state_dir``: the controller's sockets, lock and files."""
DEFAULT_LOG_DIR = "/var/log/vcluster"
"""``controller.log_dir``: ``controller.log`` and ``hooks.log``."""
DEFAULT_STATUS_FILE = "/run/vcluster/status.json"
"""``controller.status_file``: the controller's liveness, world-readable, for fsub."""
HOOK_SOCKET_NAME = "hooks.sock"
"""The controller's socket for Slurm's hooks, in ``controller.state_dir`` (mode 0600)."""


def hook_config_path(environ: Mapping[str, str]) -> str:
    """The config a hook reads: VCLUSTER_CONFIG, else the default file, else
    ``vcluster.toml`` beside SLURM_CONF (slurmctld gives its programs only SLURM_CONF)."""
    if environ.get("VCLUSTER_CONFIG"):
        return environ["VCLUSTER_CONFIG"]
    if not os.path.exists(DEFAULT_CONFIG_PATH) and environ.get("SLURM_CONF"):
        beside = os.path.join(os.path.dirname(environ["SLURM_CONF"]), "vcluster.toml")
        if os.path.exists(beside):
            return beside
    return DEFAULT_CONFIG_PATH


def hook_socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, HOOK_SOCKET_NAME)

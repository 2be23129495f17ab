"""The Slurm and OpenNebula a vcluster talks to: their versions, and which ones it drives.

``vcluster status`` shows both versions and the controller logs them at start. A version
vcluster does not support (Slurm older than 22.05, OpenNebula older than 6.10) is refused at
once in one line naming it and the supported range, instead of failing later on an output or
a call it cannot read. A side that cannot be reached is not refused here: the status says
why, and the controller's passes wait for it (whole picture or skip).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from vcluster.errors import VclusterError
from vcluster.slurm_parse import SlurmVersion, UnsupportedSlurm

MIN_OPENNEBULA = (6, 10)
SUPPORTED_OPENNEBULA = "OpenNebula 6.10 and later (6.10 LTS and 7.x)"
_ONE_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.\d+)*\s*$")


class UnsupportedOpenNebula(VclusterError):
    """oned reports a version older than vcluster supports, or one it cannot read."""


class SlurmVersionPort(Protocol):
    def version(self) -> SlurmVersion: ...


class OneVersionPort(Protocol):
    def version(self) -> str: ...


def check_opennebula_version(text: str) -> str:
    """``"7.4.0"`` if vcluster supports it, else :class:`UnsupportedOpenNebula` (one line)."""
    match = _ONE_VERSION.match(text)
    if match is None:
        raise UnsupportedOpenNebula(f"cannot read an OpenNebula version from {text[:40]!r}; "
                                    f"vcluster supports {SUPPORTED_OPENNEBULA}")
    if (int(match.group(1)), int(match.group(2))) < MIN_OPENNEBULA:
        raise UnsupportedOpenNebula(f"OpenNebula {text.strip()} is not supported: vcluster "
                                    f"supports {SUPPORTED_OPENNEBULA}")
    return text.strip()


@dataclass(frozen=True)
class SiteVersions:
    """What each side reported; ``""`` with the reason in ``*_error`` if it could not say."""

    slurm: str
    opennebula: str
    slurm_error: str = ""
    opennebula_error: str = ""


def read_versions(slurm: SlurmVersionPort, one: OneVersionPort) -> SiteVersions:
    """Both versions. Raises :class:`UnsupportedSlurm` / :class:`UnsupportedOpenNebula` for
    a version vcluster does not drive; a side that cannot be reached gives its error text."""
    slurm_version = slurm_error = one_version = one_error = ""
    try:
        slurm_version = str(slurm.version())
    except UnsupportedSlurm:
        raise
    except VclusterError as exc:
        slurm_error = str(exc)
    try:
        one_version = check_opennebula_version(one.version())
    except UnsupportedOpenNebula:
        raise
    except VclusterError as exc:
        one_error = str(exc)
    return SiteVersions(slurm_version, one_version, slurm_error, one_error)

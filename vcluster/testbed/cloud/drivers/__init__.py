"""VM drivers of the testbed cloud: ``dummy`` (timings only) and ``netns`` (real namespaces).

:func:`make_driver` builds one by name; ``netns`` is imported only when asked for, since it
needs root and kernel tools that the dummy driver does not.
"""

from __future__ import annotations

from pathlib import Path

from vcluster.errors import ConfigError
from vcluster.testbed.cloud.drivers.base import VMDriver

DRIVER_NAMES = ("dummy", "netns")


def make_driver(name: str, *, state_dir: Path, prefix: str,
                guest_shares: tuple[str, ...] | None = None) -> VMDriver:
    """Build the driver called ``name`` keeping its files under ``state_dir``."""
    if name == "dummy":
        from vcluster.testbed.cloud.drivers.dummy import DummyDriver

        return DummyDriver(state_dir)
    if name == "netns":
        from vcluster.testbed.cloud.drivers.netns import NetnsDriver

        if guest_shares is None:
            driver: VMDriver = NetnsDriver(state_dir=state_dir, prefix=prefix)
        else:
            driver = NetnsDriver(state_dir=state_dir, prefix=prefix, guest_shares=guest_shares)
        return driver
    raise ConfigError(f"unknown VM driver {name!r}; use one of: {', '.join(DRIVER_NAMES)}",
                      key="driver")

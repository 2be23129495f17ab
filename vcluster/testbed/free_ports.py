"""Free ports for the testbed's servers: a machine may already run an oned (port 2633).

Why this exists: a site admin tries vcluster first on an OpenNebula front-end, where oned
holds 2633 and OneGate 5030. ``vcluster testbed up`` then moves the cloud to the next free
ports (and says so), unless the user chose the port: then it names the port and the option.
"""

from __future__ import annotations

import socket
from collections.abc import Collection

from vcluster.errors import VclusterError

PORT_SEARCH = 100
"""How many ports above a taken default are tried."""


class PortInUse(VclusterError):
    """A port the testbed needs is taken; the message names it and the option to change it."""


def port_is_free(port: int, host: str = "0.0.0.0") -> bool:
    """Whether a server could listen on ``port`` (bound as the cloud binds, SO_REUSEADDR).

    The wildcard address is the safe question: it is refused whatever address the port is
    taken on (an oned on 0.0.0.0, a OneGate on 127.0.0.1 only, an IPv6 ``::`` listener).
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def choose_port(port: int, *, what: str, option: str, fixed: bool,
                avoid: Collection[int] = ()) -> int:
    """``port`` if it is free; if it is taken (an oned runs here), the next free port above
    it, unless the user chose ``port`` (``fixed``): then say so, naming ``option``."""
    if port not in avoid and port_is_free(port):
        return port
    if fixed:
        raise PortInUse(f"port {port} ({what}) is already in use (an oned, or another "
                        f"testbed?); choose another with {option}")
    for candidate in range(port + 1, port + 1 + PORT_SEARCH):
        if candidate not in avoid and port_is_free(candidate):
            return candidate
    raise PortInUse(f"port {port} ({what}) and the {PORT_SEARCH} above it are in use; "
                    f"choose a free one with {option}")

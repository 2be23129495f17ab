"""`vcluster testbed up` beside a running oned: taken ports move, or are named with the option."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from vcluster.testbed.free_ports import PortInUse, choose_port, port_is_free
from vcluster.testbed.site import SiteSpec, choose_ports


@contextmanager
def occupied(host: str = "127.0.0.1") -> Iterator[int]:
    """A port held by a listening socket, as oned holds 2633 (on one address only)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        sock.listen()
        yield sock.getsockname()[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_free_port_is_kept() -> None:
    port = free_port()
    assert port_is_free(port)
    assert choose_port(port, what="OneGate", option="--onegate-port", fixed=False) == port
    assert choose_port(port, what="OneGate", option="--onegate-port", fixed=True) == port


def test_a_taken_default_port_moves_to_the_next_free_one() -> None:
    with occupied() as port:
        assert not port_is_free(port)
        chosen = choose_port(port, what="OpenNebula XML-RPC", option="--one-port", fixed=False)
        assert port < chosen <= port + 100
        assert port_is_free(chosen)


def test_a_taken_port_the_user_chose_is_named_with_its_option() -> None:
    with occupied() as port, pytest.raises(PortInUse) as raised:
        choose_port(port, what="OpenNebula XML-RPC", option="--one-port", fixed=True)
    assert str(raised.value) == (f"port {port} (OpenNebula XML-RPC) is already in use (an "
                                 "oned, or another testbed?); choose another with --one-port")


def test_the_site_moves_both_ports_and_says_so() -> None:
    said: list[str] = []
    with occupied() as one_port, occupied() as gate_port:
        spec = choose_ports(SiteSpec(one_port=one_port, onegate_port=gate_port), say=said.append)
    assert spec.one_port not in (one_port, gate_port)
    assert spec.onegate_port not in (one_port, gate_port, spec.one_port)
    assert spec.xmlrpc == f"http://127.0.0.1:{spec.one_port}/RPC2"
    assert said == [
        f"port {one_port} is in use (an oned?): the cloud's XML-RPC uses port {spec.one_port} "
        "(--one-port to choose)",
        f"port {gate_port} is in use (an oned?): the cloud's OneGate uses port "
        f"{spec.onegate_port} (--onegate-port to choose)"]


def test_the_site_keeps_free_ports_and_refuses_a_taken_fixed_one() -> None:
    one_port, gate_port = free_port(), free_port()
    said: list[str] = []
    spec = SiteSpec(one_port=one_port, onegate_port=gate_port)
    assert choose_ports(spec, {"one_port", "onegate_port"}, said.append) == spec
    assert said == []
    with occupied() as taken, pytest.raises(PortInUse, match="choose another with "
                                            "--onegate-port$"):
        choose_ports(SiteSpec(one_port=one_port, onegate_port=taken), {"onegate_port"})

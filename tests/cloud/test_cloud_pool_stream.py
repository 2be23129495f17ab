"""The VM pool read as it arrives (vcluster.one_stream + one_vm.PoolReader), on the testbed
cloud's real answers: the same VMs as pyone's own parsing, and oned's errors (a refused
session, an XML-RPC fault) reaching the caller as they do without streaming."""

from __future__ import annotations

import secrets
import time
import xmlrpc.client

import pytest
import requests

from tests.cloud.conftest import AUTH, Running
from vcluster.config import OpenNebulaSettings, parse_config
from vcluster.errors import OneAuthError
from vcluster.one import OneClient
from vcluster.one_stream import AnswerStream
from vcluster.one_vm import CONTEXT_KEPT, VM, PoolReader, vm_from_binding
from vcluster.vmtemplate import GuestContext, worker_vm_extra

BASE = 'NIC = [ NETWORK = "vcluster" ]\n'


def _worker_vms(cloud: Running, cluster: str, count: int) -> list[int]:
    """VMs made as vcluster makes them (worker_vm_extra: tags, bootstrap, join token)."""
    nc = parse_config({"node_class": [{"name": "small", "prefix": "vb-", "count": 8,
                                       "template": "worker", "cpus": 1,
                                       "memory_mb": 64}]}).node_classes[0]
    guest = GuestContext(slurm_conf_server="10.0.0.1:6817", join_url="http://10.0.0.1:6830")
    ids = []
    for i in range(count):
        extra = worker_vm_extra(node_class=nc, node_name=f"vb-{i:03d}", job_id=100 + i,
                                cluster=cluster, cpus=1, memory_mb=64, context=guest,
                                join_token=secrets.token_urlsafe(32))
        ids.append(int(cloud.one.vm.allocate(BASE + extra, False)))
    return ids


def _client(cloud: Running, session: str = AUTH) -> OneClient:
    return OneClient(OpenNebulaSettings(xmlrpc=cloud.server.endpoint, retry_delays_s=()),
                     session=session)


def _body(cloud: Running, method: str, *params: object) -> bytes:
    request = xmlrpc.client.dumps(params, method).encode()
    return requests.post(cloud.server.endpoint, data=request, timeout=10).content


def test_streamed_pool_is_what_pyone_reads(cloud: Running) -> None:
    ours = _worker_vms(cloud, "bench", 3)
    _worker_vms(cloud, "other", 1)
    cloud.one.vm.update(ours[0], 'READY = "YES"', 1)

    def by_pyone_now() -> dict[int, VM]:
        return {int(v.ID): vm_from_binding(v)
                for v in cloud.one.vmpool.infoextended(-2, -1, -1, -1).VM}

    # compared once they stand still: a VM going through PROLOG and BOOT between the two
    # reads would be seen in two states
    deadline = time.monotonic() + 60
    while {by_pyone_now()[i].state_name for i in ours} != {"RUNNING"}:
        assert time.monotonic() < deadline, "the VMs did not reach RUNNING"
        time.sleep(0.1)
    streamed = _client(cloud).vms(cluster="bench")
    assert [vm.vm_id for vm in streamed] == sorted(ours, reverse=True)
    by_pyone = by_pyone_now()
    for vm in streamed:
        expected = by_pyone[vm.vm_id]
        kept = {k: v for k, v in expected.context.items() if k in CONTEXT_KEPT}
        assert (vm.name, vm.state_name, vm.ips, vm.user_template, vm.host) == (
            expected.name, expected.state_name, expected.ips, expected.user_template,
            expected.host)
        assert vm.context == kept and vm.wants_ready
    assert [vm.is_ready for vm in streamed] == [vm.vm_id == ours[0] for vm in streamed]


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_answer_stream_in_any_chunks_feeds_the_whole_value(cloud: Running, chunk: int) -> None:
    _worker_vms(cloud, "bench", 2)
    body = _body(cloud, "one.vmpool.infoextended", AUTH, -2, -1, -1, -1)
    (expected,), _ = xmlrpc.client.loads(body)
    pieces: list[str] = []
    answer = AnswerStream(pieces.append, _fail).read(
        body[at:at + chunk] for at in range(0, len(body), chunk))
    assert answer == [True, "", expected[2]]
    assert "".join(pieces) == expected[1]
    reader = PoolReader("bench")
    for piece in pieces:
        reader.feed(piece)
    assert len(reader.close()) == 2


def _fail(body: bytes) -> object:
    raise AssertionError("a successful answer was not streamed")


def _loads(body: bytes) -> object:
    return xmlrpc.client.loads(body)[0][0]


def test_refused_session_is_an_answer_not_a_stream(cloud: Running) -> None:
    body = _body(cloud, "one.vmpool.infoextended", "oneadmin:wrong", -2, -1, -1, -1)
    pieces: list[str] = []
    result = AnswerStream(pieces.append, _loads).read([body])
    assert isinstance(result, list) and result[0] is False and pieces == []
    with pytest.raises(OneAuthError, match="rejected the credentials"):
        _client(cloud, "oneadmin:wrong").vms()


def test_fault_reaches_the_caller(cloud: Running) -> None:
    body = _body(cloud, "one.vmpool.infoextended", AUTH, "not a number", -1, -1, -1)
    with pytest.raises(xmlrpc.client.Fault):
        AnswerStream([].append, _loads).read([body[:50], body[50:]])


def test_a_pool_text_that_is_not_a_pool_is_a_bad_request(cloud: Running) -> None:
    reader = PoolReader()
    with pytest.raises(ValueError, match="expected <VM_POOL>"):
        reader.feed("<HOST_POOL><VM><ID>1</ID></VM></HOST_POOL>")
        reader.close()
    with pytest.raises(ValueError, match="expected <VM_POOL>, got <HOST_POOL>"):
        _client(cloud)._call("hostpool.info", doing="list hosts", subject="host pool",
                             hint="", stream=PoolReader)


def test_an_untyped_string_value_is_read_whole_by_the_fallback() -> None:
    """XML-RPC allows a string without <string>: not streamed, but not lost either."""
    body = xmlrpc.client.dumps(([True, "<VM_POOL></VM_POOL>", 0],), methodresponse=True)
    body = body.replace("<value><string>", "<value>").replace("</string></value>", "</value>")
    pieces: list[str] = []
    answer = AnswerStream(pieces.append, _loads).read([body.encode()])
    assert answer == [True, "<VM_POOL></VM_POOL>", 0] and pieces == []


def test_xmlrpc_c_layout_is_streamed() -> None:
    """oned answers through xmlrpc-c: an encoding declaration, CRLF line ends, <i4>, and
    CRs in values written as character references."""
    pool = "<VM_POOL><VM><ID>7</ID><NAME>a&amp;b\r\nc</NAME></VM></VM_POOL>"
    escaped = pool.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") \
        .replace("\r", "&#x0d;")
    body = ('<?xml version="1.0" encoding="UTF-8"?>\r\n<methodResponse>\r\n<params>\r\n'
            "<param><value><array><data>\r\n<value><boolean>1</boolean></value>\r\n"
            f"<value><string>{escaped}</string></value>\r\n<value><i4>0</i4></value>\r\n"
            "</data></array></value></param>\r\n</params>\r\n</methodResponse>\r\n").encode()
    for size in (1, 5, 64):
        pieces: list[str] = []
        answer = AnswerStream(pieces.append, _fail).read(
            body[at:at + size] for at in range(0, len(body), size))
        assert answer == [True, "", 0] and "".join(pieces) == pool
        reader = PoolReader()
        for piece in pieces:
            reader.feed(piece)
        (vm,) = reader.close()
        assert (vm.vm_id, vm.name) == (7, "a&b\r\nc".replace("\r\n", "\n"))


def test_a_range_of_vms_is_read_in_one_call(cloud: Running) -> None:
    """``vm_range``: the VMs a pass just allocated, read in one pool call (oned's inclusive
    start and end ids), each with the IP oned leased it at allocation."""
    ids = _worker_vms(cloud, "bench", 4)
    got = _client(cloud).vm_range(ids[1], ids[2])
    assert sorted(vm.vm_id for vm in got) == [ids[1], ids[2]]
    by_pyone = {int(v.ID): str(v.TEMPLATE["NIC"]["IP"])
                for v in cloud.one.vmpool.infoextended(-2, -1, -1, -1).VM}
    assert {vm.vm_id: vm.ips[0] for vm in got} == {i: by_pyone[i] for i in ids[1:3]}

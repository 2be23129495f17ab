"""The testbed cloud's XML-RPC API as pyone and a raw XML-RPC client see it."""

from __future__ import annotations

import urllib.request
import xmlrpc.client

import pyone
import pytest

from tests.cloud.conftest import AUTH, VM_TEXT, Running


def _fault(call) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(xmlrpc.client.Fault) as info:
        call()
    return info.value.faultCode, info.value.faultString


def test_version_and_config(cloud: Running) -> None:
    assert cloud.one.system.version() == "7.4.0"
    config = cloud.raw.one.system.config(AUTH)
    assert config[0] is True and config[2] == 0
    assert "<API_LIST_ORDER><![CDATA[DESC]]></API_LIST_ORDER>" in config[1]
    assert "<SCHED_MAX_WND_TIME><![CDATA[0]]></SCHED_MAX_WND_TIME>" in config[1]


def test_authentication_is_checked_before_parameters(cloud: Running) -> None:
    assert cloud.raw.one.vm.info("oneadmin:wrong", "not-an-int") == [
        False, "[one.vm.info] User couldn't be authenticated, aborting call.", 0x100, -1, -1]
    bad = pyone.OneServer(cloud.server.endpoint, session="oneadmin:wrong")
    with pytest.raises(pyone.OneAuthenticationException,
                       match=r"^\[one.vmpool.info\] User couldn't be authenticated"):
        bad.vmpool.info(-2, -1, -1, -1)


def test_parameter_faults_and_unknown_method(cloud: Running) -> None:
    raw = cloud.raw
    assert _fault(lambda: raw.one.vm.info(AUTH, "7")) == (
        -501, "Parameter that is supposed to be integer is not")
    assert _fault(lambda: raw.one.vm.allocate(AUTH, VM_TEXT, 1)) == (
        -501, "Parameter that is supposed to be boolean is not")
    assert _fault(lambda: raw.one.vm.action(AUTH, 3, 0)) == (
        -501, "Parameter that is supposed to be a string is not")
    assert _fault(lambda: raw.one.vm.info(AUTH)) == (-501, "Not enough parameters")
    # oned 7.4 reads vm.action's id (its second parameter) before the action
    assert _fault(lambda: raw.one.vm.action(AUTH, 3, "x")) == (
        -501, "Parameter that is supposed to be integer is not")
    # host.allocate and vn.allocate need the cluster id in 7.4
    assert _fault(lambda: raw.one.host.allocate(AUTH, "h", "dummy", "dummy")) == (
        -501, "Not enough parameters")
    assert _fault(lambda: raw.one.vn.allocate(AUTH, 'NAME = "n"\nVN_MAD = "bridge"')) == (
        -501, "Not enough parameters")
    assert _fault(lambda: raw.one.vm.explode(AUTH)) == (
        -506, "Method 'one.vm.explode' not defined")
    # extra parameters are ignored
    assert raw.one.system.version(AUTH, 1, "x") == [True, "7.4.0", 0]
    with pytest.raises(pyone.OneException, match="-506"):
        cloud.one.vm.explode(1)


def test_allocate_splits_known_and_user_attributes(cloud: Running) -> None:
    vm_id = cloud.one.vm.allocate(VM_TEXT + 'VCLUSTER_NODE = "vc-001"\nVCPU = 2\n', True)
    vm = cloud.one.vm.info(vm_id)
    assert vm.NAME == f"one-{vm_id}"
    assert (vm.STATE, vm.LCM_STATE) == (2, 0)  # HOLD
    assert vm.TEMPLATE["CPU"] == "0.1" and vm.TEMPLATE["VCPU"] == "2"
    assert vm.TEMPLATE["VMID"] == str(vm_id)
    assert dict(vm.USER_TEMPLATE) == {"VCLUSTER_NODE": "vc-001"}


@pytest.mark.parametrize(("text", "message"), [
    ('CPU = 1\n', "[one.vm.allocate] MEMORY attribute must be a positive integer value."),
    ('CPU = 1\nMEMORY = -5\n',
     "[one.vm.allocate] MEMORY attribute must be a positive integer value."),
    ('MEMORY = 64\nCPU = zero\n',
     "[one.vm.allocate] CPU attribute must be a positive float or integer value."),
    ('CPU = 1\nMEMORY',
     "[one.vm.allocate] Parse error: syntax error, unexpected $end, expecting EQUAL or "
     "EQUAL_EMPTY at line 2, columns 9:15"),
    ('CPU = [ A = 1 B = 2 ]',
     "[one.vm.allocate] Parse error: syntax error, unexpected VARIABLE, expecting COMMA or "
     "CBRACKET at line 1, columns 15:16"),
    ('<TEMPLATE><CPU>1</CPU>', "[one.vm.allocate] Parse error: XML Template malformed."),
])
def test_allocate_errors(cloud: Running, text: str, message: str) -> None:
    with pytest.raises(pyone.OneInternalException) as info:
        cloud.one.vm.allocate(text)
    assert str(info.value) == message


def test_xml_template_and_escapes(cloud: Running) -> None:
    vm_id = cloud.one.vm.allocate(
        "<TEMPLATE><NAME>x1</NAME><CPU>1</CPU><MEMORY>32</MEMORY><NOTE>a&lt;b</NOTE>"
        "</TEMPLATE>", True)
    assert cloud.one.vm.info(vm_id).USER_TEMPLATE["NOTE"] == "a<b"
    # a quote is escaped in values (a NAME may not hold one: oned refuses it)
    vm_id = cloud.one.vm.allocate(VM_TEXT + 'Q = "q\\"uote"\nS = "a\\\\b"\n', True)
    vm = cloud.one.vm.info(vm_id)
    assert vm.USER_TEMPLATE["Q"] == 'q"uote' and vm.USER_TEMPLATE["S"] == "a\\\\b"


def test_short_pool_drops_custom_attributes_extended_keeps_them(cloud: Running) -> None:
    vm_id = cloud.one.vm.allocate(
        VM_TEXT + 'VCLUSTER_NODE = "n1"\nSCHED_REQUIREMENTS = "ID = 99"\n'
        'CONTEXT = [ NETWORK = "YES", X = "1" ]\nNIC = [ NETWORK = "vcluster" ]\n')
    short = cloud.one.vmpool.info(-2, -1, -1, -1).VM[0]
    assert short.ID == vm_id
    assert "VCLUSTER_NODE" not in short.USER_TEMPLATE
    assert short.USER_TEMPLATE["SCHED_REQUIREMENTS"] == "ID = 99"
    assert "CONTEXT" not in short.TEMPLATE
    assert short.TEMPLATE["NIC"]["IP"] == "10.111.0.100"
    full = cloud.one.vmpool.infoextended(-2, -1, -1, -1).VM[0]
    assert full.USER_TEMPLATE["VCLUSTER_NODE"] == "n1"
    assert full.TEMPLATE["CONTEXT"]["X"] == "1"


def test_answers_are_not_compressed_even_for_a_client_that_accepts_gzip(cloud: Running
                                                                        ) -> None:
    # as oned's xmlrpc-c server: pyone's transport (requests) always offers gzip
    for _ in range(5):
        cloud.one.vm.allocate(VM_TEXT + 'CONTEXT = [ NETWORK = "YES", X = "1" ]\n')
    body = xmlrpc.client.dumps((AUTH, -2, -1, -1, -1), "one.vmpool.infoextended").encode()
    request = urllib.request.Request(
        cloud.server.endpoint, data=body,
        headers={"Content-Type": "text/xml", "Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = response.read()
        assert response.headers.get("Content-Encoding") is None
    assert len(answer) > 1400
    ((ok, pool, _code),), _method = xmlrpc.client.loads(answer)
    assert ok and pool.count("<VM>") == 5


def test_pools_are_newest_first_with_ranges_pages_and_state_filter(cloud: Running) -> None:
    ids = [cloud.one.vm.allocate(VM_TEXT, True) for _ in range(5)]
    cloud.one.vm.action("terminate", ids[0])

    def listed(*args: int) -> list[int]:
        pool = cloud.one.vmpool.info(*args)
        return [vm.ID for vm in pool.VM] if pool.VM else []

    assert listed(-2, -1, -1, -1) == ids[:0:-1]          # DONE left out
    assert listed(-2, -1, -1, -2) == ids[::-1]           # -2: DONE too
    assert listed(-2, -1, -1, 6) == [ids[0]]
    assert listed(-2, ids[1], ids[3], -2) == [ids[3], ids[2], ids[1]]
    assert listed(-2, ids[2], -1, -2) == [ids[4], ids[3], ids[2]]
    assert listed(-2, 0, -2, -2) == [ids[4], ids[3]]     # first page of 2
    assert listed(-2, 2, -2, -2) == [ids[2], ids[1]]     # second page
    assert listed(5, -1, -1, -2) == []                   # another owner
    with pytest.raises(pyone.OneApiException, match=r"^\[one.vmpool.info\] Incorrect "
                       r"filter_flag"):
        cloud.one.vmpool.info(-5, -1, -1, -1)
    with pytest.raises(pyone.OneApiException) as info:
        cloud.one.vmpool.info(-5, -1, -1, 12)     # the state is checked first
    assert str(info.value) == "[one.vmpool.info] Incorrect state filter 12"
    # a JSON query needs oned on MySQL; on SQLite (the testbed's) oned refuses it, first
    with pytest.raises(pyone.OneInternalException) as info:
        cloud.one.vmpool.infoextended(-5, -1, -1, 12, "VM.NAME=x")
    assert str(info.value) == ("[one.vmpool.infoextended] JSON query search is not "
                               "supported by the SQL backend")


def test_not_found_answers(cloud: Running) -> None:
    assert cloud.raw.one.vm.info(AUTH, 42) == [
        False, "[one.vm.info] Error getting virtual machine [42].", 0x400, 42, -1]
    with pytest.raises(pyone.OneNoExistsException,
                       match=r"^\[one.host.info\] Error getting host \[9\]\.$"):
        cloud.one.host.info(9)
    with pytest.raises(pyone.OneNoExistsException,
                       match=r"Error getting virtual machine template \[3\]\."):
        cloud.one.template.instantiate(3, "x")


def test_templates_allocate_info_instantiate_merge(cloud: Running) -> None:
    tid = cloud.one.template.allocate(
        'NAME = "worker"\nCPU = 1\nMEMORY = 128\nLABEL = "stored"\n'
        'CONTEXT = [ A = "1", B = "2" ]\n')
    with pytest.raises(pyone.OneInternalException,
                       match=rf"^\[one.template.allocate\] NAME is already taken by TEMPLATE "
                             rf"{tid}\.$"):
        cloud.one.template.allocate('NAME = "worker"\nCPU = 1\n')
    assert cloud.one.template.info(tid).NAME == "worker"
    with pytest.raises(pyone.OneInternalException) as info:
        cloud.one.template.allocate("CPU = 1\nMEMORY = 64\n")
    assert str(info.value) == "[one.template.allocate] Invalid NAME, it cannot be empty"
    with pytest.raises(pyone.OneInternalException) as info:
        cloud.one.template.allocate('NAME = "a|b"\nCPU = 1\n')
    assert str(info.value) == "[one.template.allocate] Invalid NAME, char '|' is not allowed"
    assert [t.ID for t in cloud.one.templatepool.info(-2, -1, -1).VMTEMPLATE] == [tid]
    vm_id = cloud.one.template.instantiate(tid, "", True, 'MEMORY = 256\nCONTEXT = [ C = "3" ]')
    vm = cloud.one.vm.info(vm_id)
    assert vm.NAME == f"worker-{vm_id}"
    assert vm.TEMPLATE["MEMORY"] == "256"
    # the extra CONTEXT replaces the stored one (oned adds DISK_ID and TARGET)
    assert dict(vm.TEMPLATE["CONTEXT"]) == {"C": "3", "DISK_ID": "0", "TARGET": "hda"}
    assert vm.TEMPLATE["TEMPLATE_ID"] == str(tid)
    assert vm.USER_TEMPLATE["LABEL"] == "stored"
    assert cloud.one.template.instantiate(tid, "named", True, "") != vm_id
    with pytest.raises(pyone.OneException) as info:
        cloud.one.template.instantiate(tid, "bad", True, "MEMORY = 0")
    assert str(info.value) == ("[one.template.instantiate] Error allocating a new virtual "
                               "machine template. MEMORY attribute must be a positive integer "
                               "value.")
    with pytest.raises(pyone.OneInternalException,
                       match=r"^\[one.template.instantiate\] Parse error: syntax error"):
        cloud.one.template.instantiate(tid, "bad", True, "MEMORY = [")


def test_update_replaces_or_merges_user_template(cloud: Running) -> None:
    vm_id = cloud.one.vm.allocate(VM_TEXT + "A = 1\nB = 2\n", True)
    assert cloud.one.vm.update(vm_id, "B = 3\nC = 4", 1) == vm_id
    assert dict(cloud.one.vm.info(vm_id).USER_TEMPLATE) == {"A": "1", "B": "3", "C": "4"}
    cloud.one.vm.update(vm_id, "D = 5", 0)
    assert dict(cloud.one.vm.info(vm_id).USER_TEMPLATE) == {"D": "5"}
    assert cloud.raw.one.vm.update(AUTH, vm_id, "E = 6", 2) == [
        False, "[one.vm.update] Wrong update type", 0x1000, -1, -1]
    assert cloud.raw.one.vm.update(AUTH, 999, "E = 6", 2)[1:3] == [
        "[one.vm.update] Error getting virtual machine [999].", 0x400]
    answer = cloud.raw.one.vm.update(AUTH, vm_id, "E = [", 1)
    assert answer[1].startswith("[one.vm.update] Parse error: syntax error")
    assert answer[2] == 0x800  # ACTION: oned's update answers a parse error so


def test_hosts(cloud: Running) -> None:
    hid = cloud.one.host.allocate("extra", "dummy", "dummy", -1)
    assert hid == 2
    assert cloud.raw.one.host.allocate(AUTH, "extra", "dummy", "dummy", -1) == [
        False, "[one.host.allocate] Error allocating a new host. NAME is already taken by "
        "HOST 2.", 0x4000, -1, -1]
    assert cloud.raw.one.host.allocate(AUTH, "other", "dummy", "dummy", 5) == [
        False, "[one.host.allocate] Error getting cluster [5].", 0x400, 5, -1]
    hosts = cloud.one.hostpool.info().HOST
    assert [h.NAME for h in hosts] == ["extra", "host1", "host0"]
    host = cloud.one.host.info(0)
    assert host.HOST_SHARE.MAX_CPU == 800 and host.HOST_SHARE.RUNNING_VMS == 0


def test_network_leases_and_context(cloud: Running) -> None:
    vm_id = cloud.one.vm.allocate(
        VM_TEXT + 'NAME = "ctx"\nNIC = [ NETWORK = "vcluster" ]\nROLE = "worker"\n'
        'CONTEXT = [ NETWORK = "YES", TOKEN = "YES", SET_HOSTNAME = "$NAME", '
        'ROLE = "$ROLE", IP = "$NIC[IP]", NOPE = "x$UNDEFINED" ]\n', True)
    vm = cloud.one.vm.info(vm_id)
    ctx = vm.TEMPLATE["CONTEXT"]
    assert ctx["SET_HOSTNAME"] == "ctx" and ctx["ROLE"] == "worker"
    assert ctx["IP"] == ctx["ETH0_IP"] == "10.111.0.100"
    assert ctx["ETH0_MAC"] == "02:00:0a:6f:00:64"
    assert ctx["ETH0_MASK"] == "255.255.255.0" and ctx["ETH0_GATEWAY"] == "10.111.0.1"
    assert ctx["NOPE"] == "x"
    assert ctx["VMID"] == str(vm_id)
    assert ctx["ONEGATE_ENDPOINT"] == f"http://127.0.0.1:{cloud.server.onegate_port}"
    assert vm.TEMPLATE["CREATED_BY"] == "0"
    assert vm.TEMPLATE["AUTOMATIC_REQUIREMENTS"] == (
        "(CLUSTER_ID = 0) & !(PUBLIC_CLOUD = YES) & !(PIN_POLICY = PINNED)")
    assert vm.TEMPLATE["AUTOMATIC_NIC_REQUIREMENTS"] == '("CLUSTERS/ID" @> 0)'
    vnet = cloud.one.vn.info(0)
    assert vnet.BRIDGE == "vcbr0" and vnet.USED_LEASES == 1
    second = cloud.one.vm.allocate(VM_TEXT + 'NIC = [ NETWORK_ID = "0" ]', True)
    assert cloud.one.vm.info(second).TEMPLATE["NIC"]["IP"] == "10.111.0.101"
    cloud.one.vm.action("terminate", vm_id)
    assert cloud.one.vn.info(0).USED_LEASES == 1


def test_instantiate_reads_each_optional_parameter_alone(cloud: Running) -> None:
    # oned 7.4 reads hold, extra and persistent each when present (6.x read hold and extra
    # together: hold alone was "Not enough parameters")
    tid = cloud.one.template.allocate('NAME = "pair"\nCPU = 1\nMEMORY = 64\n')
    answer = cloud.raw.one.template.instantiate(AUTH, tid, "x", True)
    assert answer[0] is True and answer[2] == 0
    assert cloud.one.vm.info(answer[1]).STATE == 2  # HOLD: the flag was read
    answer = cloud.raw.one.template.instantiate(AUTH, tid, "y", True, "", False)
    assert answer[0] is True
    assert cloud.raw.one.template.instantiate(AUTH, tid, "z")[0] is True
    assert _fault(lambda: cloud.raw.one.template.instantiate(AUTH, tid, "w", True, 1)) == (
        -501, "Parameter that is supposed to be a string is not")


def test_failures_carry_the_replication_index_as_i8(cloud: Running) -> None:
    """oned's 5th element is its replication index, UINT64_MAX outside a raft log, sent as
    an xmlrpc-c ``<i8>``: -1 on the wire."""
    import urllib.request

    body = xmlrpc.client.dumps((AUTH, 4242), "one.vm.info").encode()
    request = urllib.request.Request(cloud.server.endpoint, data=body,
                                     headers={"Content-Type": "text/xml"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    assert "<value><int>4242</int></value>\n<value><i8>-1</i8></value>" in text


def test_vnet_allocate_needs_a_vn_mad_and_a_known_cluster(cloud: Running) -> None:
    assert cloud.raw.one.vn.allocate(AUTH, 'NAME = "n1"', -1) == [
        False, "[one.vn.allocate] No VN_MAD in template for Virtual Network.", 0x2000, -1, -1]
    assert cloud.raw.one.vn.allocate(AUTH, 'NAME = "n1"\nVN_MAD = "bridge"', 3)[1:4] == [
        "[one.vn.allocate] Error getting cluster [3].", 0x400, 3]
    answer = cloud.raw.one.vn.allocate(AUTH, 'NAME = "n1"\nVN_MAD = "bridge"', -1)
    assert answer[0] is True
    assert cloud.one.vn.info(answer[1]).VN_MAD == "bridge"


def test_vm_names_are_checked_as_oned_checks_them(cloud: Running) -> None:
    with pytest.raises(pyone.OneInternalException) as info:
        cloud.one.vm.allocate('NAME = "a;b"\nMEMORY = 0\n')   # the name, before MEMORY
    assert str(info.value) == "[one.vm.allocate] Invalid NAME, char ';' is not allowed"
    with pytest.raises(pyone.OneException) as raised:
        cloud.one.template.instantiate(
            cloud.one.template.allocate('NAME = "t"\n' + VM_TEXT), "x" * 129, True, "")
    assert str(raised.value) == ("[one.template.instantiate] Error allocating a new virtual "
                                 "machine template. Invalid NAME, max length is 128 chars")


def test_nic_on_a_missing_network(cloud: Running) -> None:
    with pytest.raises(pyone.OneInternalException) as info:
        cloud.one.vm.allocate(VM_TEXT + 'NIC = [ NETWORK = "nope" ]')
    assert str(info.value) == ("[one.vm.allocate] User 0 does not own a network with name: "
                               "nope . Set NETWORK_UNAME or NETWORK_UID of owner in NIC.")
    with pytest.raises(pyone.OneInternalException,
                       match=r"^\[one.vm.allocate\] Virtual network 7 does not exist$"):
        cloud.one.vm.allocate(VM_TEXT + 'NIC = [ NETWORK_ID = "7" ]')
    # nothing was leased by the failed allocations
    assert cloud.one.vn.info(0).USED_LEASES == 0


def test_failed_allocations_use_no_id(cloud: Running) -> None:
    first = cloud.one.vm.allocate(VM_TEXT, True)
    with pytest.raises(pyone.OneInternalException):
        cloud.one.vm.allocate("CPU = 1\n")
    with pytest.raises(pyone.OneInternalException):
        cloud.one.vm.allocate(VM_TEXT + 'NIC = [ NETWORK = "nope" ]')
    assert cloud.one.vm.allocate(VM_TEXT, True) == first + 1

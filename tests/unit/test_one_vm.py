"""VM states named like oned names them, and VMs read from oned's XML through pyone."""

from __future__ import annotations

import pyone.bindings
import pytest

from tests.unit.fake_oned import running_fake_oned, vm_xml
from vcluster.config import OpenNebulaSettings
from vcluster.one import OneClient
from vcluster.one_vm import (
    VM,
    LcmState,
    VmState,
    state_name,
    vm_from_binding,
    vms_from_pool_xml,
)


def test_state_names_follow_oned() -> None:
    assert state_name(1, 0) == "PENDING"
    assert state_name(3, 3) == "RUNNING"
    assert state_name(3, 36) == "BOOT_FAILURE"
    assert state_name(3, 16) == "UNKNOWN"
    assert state_name(6, 0) == "DONE"
    assert state_name(3, 69) == "BACKUP"  # newer than pyone's enum
    assert state_name(3, 71) == "RESTORE"


def test_unknown_numbers_get_a_name_instead_of_an_error() -> None:
    assert state_name(3, 13) == "LCM_STATE_13"  # CANCEL, removed from oned
    assert state_name(3, 140) == "LCM_STATE_140"
    assert state_name(7, 0) == "STATE_7"  # FAILED, removed from oned
    assert state_name(42, 0) == "STATE_42"


def test_enum_values_match_oned() -> None:
    assert VmState.POWEROFF == 8 and VmState.CLONING_FAILURE == 11
    assert LcmState["CLEANUP_RESUBMIT"].value == 15
    assert LcmState["PROLOG_FAILURE"].value == 39
    assert LcmState["BACKUP_POWEROFF"].value == 70
    assert "CANCEL" not in LcmState.__members__


def test_vm_from_pyone_binding() -> None:
    xml = vm_xml(
        12, "vc-small-001", state=3, lcm_state=3, nics=("10.111.0.100", "10.111.0.101"),
        user_template=("<VCLUSTER_NODE><![CDATA[vc-small-001]]></VCLUSTER_NODE>"
                       "<VCLUSTER_JOB><![CDATA[]]></VCLUSTER_JOB><EMPTY/>"
                       "<READY><![CDATA[YES]]></READY>"
                       "<SCHED_MESSAGE><![CDATA[Cannot dispatch VM]]></SCHED_MESSAGE>"),
        context="<SET_HOSTNAME><![CDATA[vc-small-001]]></SET_HOSTNAME>"
                "<TOKEN><![CDATA[YES]]></TOKEN>",
    )
    vm = vm_from_binding(pyone.bindings.parseString(xml.encode()))
    assert vm.vm_id == 12 and vm.name == "vc-small-001"
    assert vm.state_name == "RUNNING" and vm.is_running and vm.is_ready
    assert not vm.is_failed and not vm.is_gone
    assert vm.ips == ("10.111.0.100", "10.111.0.101")
    assert vm.user_template == {"VCLUSTER_NODE": "vc-small-001", "VCLUSTER_JOB": "",
                                "EMPTY": "", "READY": "YES",
                                "SCHED_MESSAGE": "Cannot dispatch VM"}
    assert vm.context == {"SET_HOSTNAME": "vc-small-001", "TOKEN": "YES"}
    assert vm.sched_message == "Cannot dispatch VM"
    assert (vm.start_time, vm.end_time) == (1763700000, 0)


def test_vm_host_is_its_last_placement() -> None:
    def host(*hosts: str) -> str:
        return vm_from_binding(pyone.bindings.parseString(
            vm_xml(3, "vc-small-001", hosts=hosts).encode())).host

    assert host() == ""
    assert host("node-a") == "node-a"
    assert host("node-a", "node-b") == "node-b"  # migrated


def test_readiness_read_from_context_and_user_template() -> None:
    def read(state: int, lcm: int, context: str, ready: bool) -> VM:
        return vm_from_binding(pyone.bindings.parseString(vm_xml(
            5, "vc-small-002", state=state, lcm_state=lcm, context=context,
            user_template="<READY><![CDATA[YES]]></READY>" if ready else "").encode()))

    asks = "<TOKEN><![CDATA[YES]]></TOKEN><REPORT_READY><![CDATA[YES]]></REPORT_READY>"
    contextualizing = read(3, 3, asks, ready=False)
    assert contextualizing.wants_ready and not contextualizing.is_ready
    assert contextualizing.awaiting_ready
    ready = read(3, 3, asks, ready=True)
    assert ready.is_ready and not ready.awaiting_ready
    booting = read(3, 2, asks, ready=False)  # BOOT: not RUNNING yet, so not awaiting READY
    assert booting.wants_ready and not booting.awaiting_ready
    not_asked = read(3, 3, "<TOKEN><![CDATA[YES]]></TOKEN>", ready=False)
    assert not not_asked.wants_ready and not not_asked.awaiting_ready


def test_failed_and_gone_vms() -> None:
    boot_failure = vm_from_binding(pyone.bindings.parseString(
        vm_xml(1, "a", state=3, lcm_state=36, nics=()).encode()))
    assert boot_failure.is_failed and boot_failure.ips == () and boot_failure.context == {}
    unknown = vm_from_binding(pyone.bindings.parseString(
        vm_xml(2, "b", state=3, lcm_state=16).encode()))
    assert unknown.is_failed and unknown.state_name == "UNKNOWN"
    done = vm_from_binding(pyone.bindings.parseString(vm_xml(3, "c", state=6).encode()))
    assert done.is_gone and not done.is_failed and done.user_template == {}


def test_vms_filtered_by_cluster_over_xml_rpc() -> None:
    with running_fake_oned() as fake:
        fake.vms[1] = vm_xml(1, "vc-small-001", user_template=(
            "<VCLUSTER_CLUSTER><![CDATA[vc]]></VCLUSTER_CLUSTER>"))
        fake.vms[2] = vm_xml(2, "other", user_template=(
            "<VCLUSTER_CLUSTER><![CDATA[elsewhere]]></VCLUSTER_CLUSTER>"))
        fake.vms[3] = vm_xml(3, "untagged")
        one = OneClient(OpenNebulaSettings(xmlrpc=fake.url, retry_delays_s=()),
                        session=fake.session)
        assert [v.name for v in one.vms()] == ["untagged", "other", "vc-small-001"]
        assert [v.vm_id for v in one.vms(cluster="vc")] == [1]
        assert one.allocate('MEMORY = "64"\n', hold=True) == 4
        assert one.vm(4).state_name == "HOLD"


def _pool(*vms: str) -> str:
    return "<VM_POOL>" + "".join(vms) + "</VM_POOL>"


def test_pool_reader_reads_what_pyone_reads() -> None:
    """The lean pool reader gives the VM pyone's bindings give, but CONTEXT keeps only the
    attributes vcluster reads (the join script and the like are left behind)."""
    vms = [
        vm_xml(12, "vc-small-001", state=3, lcm_state=3, nics=("10.111.0.100", "10.111.0.101"),
               user_template=("<VCLUSTER_NODE><![CDATA[vc-small-001]]></VCLUSTER_NODE>"
                              "<VCLUSTER_JOB><![CDATA[]]></VCLUSTER_JOB><EMPTY/>"
                              "<READY><![CDATA[YES]]></READY><LABELS><A><![CDATA[1]]></A>"
                              "</LABELS><SCHED_MESSAGE><![CDATA[Cannot & <dispatch>]]>"
                              "</SCHED_MESSAGE>"),
               context="<REPORT_READY><![CDATA[YES]]></REPORT_READY>"
                       "<START_SCRIPT_BASE64><![CDATA[" + "QUJD" * 2000 +
                       "]]></START_SCRIPT_BASE64><TOKEN><![CDATA[YES]]></TOKEN>"),
        vm_xml(13, "vc-small-002", state=1, lcm_state=0, nics=()),
        vm_xml(14, "vc-small-003", state=8, lcm_state=0),
    ]
    lean = vms_from_pool_xml(_pool(*vms))
    full = [vm_from_binding(pyone.bindings.parseString(v.encode())) for v in vms]
    assert [v.vm_id for v in lean] == [12, 13, 14]
    for mine, theirs in zip(lean, full, strict=True):
        assert mine.context == {k: v for k, v in theirs.context.items()
                                if k in ("REPORT_READY", "ONEGATE_ENDPOINT", "TOKEN", "NETWORK")}
        assert mine == VM(**{**theirs.__dict__, "context": mine.context})
    assert lean[0].sched_message == "Cannot & <dispatch>"
    assert lean[0].wants_ready and lean[0].is_ready


def test_pool_reader_filters_by_cluster_and_refuses_what_is_not_a_pool() -> None:
    tagged = vm_xml(1, "a", user_template="<VCLUSTER_CLUSTER><![CDATA[vc]]></VCLUSTER_CLUSTER>")
    other = vm_xml(2, "b", user_template="<VCLUSTER_CLUSTER><![CDATA[x]]></VCLUSTER_CLUSTER>")
    assert [v.vm_id for v in vms_from_pool_xml(_pool(tagged, other), cluster="vc")] == [1]
    assert vms_from_pool_xml("<VM_POOL/>") == []
    with pytest.raises(ValueError, match="expected <VM_POOL>, got <HOST_POOL>"):
        vms_from_pool_xml("<HOST_POOL></HOST_POOL>")
    with pytest.raises(ValueError, match="not XML"):
        vms_from_pool_xml("<VM_POOL><VM>")
    nested = vm_xml(3, "c", user_template="<VM><ID>9</ID></VM>")  # an attribute called VM
    assert [v.vm_id for v in vms_from_pool_xml(_pool(nested))] == [3]


def test_pool_reader_carries_the_guests_join_report() -> None:
    """VCLUSTER_JOIN_ERROR / VCLUSTER_JOIN_STAGE, written by the guest through OneGate, come
    with the lean pool read (no extra call per VM), made one short printable line."""
    reported = vm_xml(5, "vc-small-001", state=3, lcm_state=3, user_template=(
        "<VCLUSTER_JOIN_STAGE><![CDATA[key]]></VCLUSTER_JOIN_STAGE>"
        "<VCLUSTER_JOIN_ERROR>munge key refused\n(HTTP 403)&#9;</VCLUSTER_JOIN_ERROR>"))
    quiet = vm_xml(6, "vc-small-002", state=3, lcm_state=3)
    first, second = vms_from_pool_xml(_pool(reported, quiet))
    assert (first.join_stage, first.join_error) == ("key", "munge key refused (HTTP 403)")
    assert (second.join_stage, second.join_error) == ("", "")

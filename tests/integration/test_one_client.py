"""OneClient against the testbed cloud server: oned's answers become vcluster's errors.

The server runs in-process on ephemeral ports with the dummy driver (no root needed); the
client is the real OneClient over real pyone over a real socket. Each test asserts the
exact one-line message a person would see.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pyone
import pytest

from vcluster.config import NodeClass, OpenNebulaSettings
from vcluster.errors import OneAuthError, OneBadRequest, OneNotFound, OneUnavailable
from vcluster.one import VM, OneClient
from vcluster.testbed.cloud.server import CloudServer
from vcluster.testbed.cloud.settings import CloudSettings, SchedulerSettings, Timings
from vcluster.vmtemplate import GuestContext, bootstrap_script_bytes, worker_vm_extra

pytestmark = pytest.mark.integration

AUTH = "oneadmin:opennebula"
FAST = Timings(prolog_s=0.05, boot_s=0.05, shutdown_s=0.05, epilog_s=0.05, save_s=0.05,
               migrate_s=0.05, monitor_interval_s=0.2)
PLACE_NOW = SchedulerSettings(max_wnd_time_s=0.0, max_wnd_length=7, timer_s=0.5)
SMALL = NodeClass(name="small", prefix="vc-small-", count=4, cpus=1, memory_mb=64,
                  template="vcluster-worker")


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[CloudServer]:
    server = CloudServer(CloudSettings(state_dir=tmp_path / "cloud", port=0, onegate_port=0,
                                       auth=AUTH, timings=FAST, scheduler=PLACE_NOW))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def client(url: str, *, session: str | None = AUTH, auth_file: str = "~/.one/one_auth",
           retry_delays_s: tuple[float, ...] = ()) -> OneClient:
    return OneClient(OpenNebulaSettings(xmlrpc=url, auth_file=auth_file, timeout_s=5.0,
                                        retry_delays_s=retry_delays_s), session=session)


def attempts(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records
               if r.name == "vcluster.one" and r.levelno == logging.WARNING)


def wait_for(one: OneClient, vm_id: int, state_name: str, timeout_s: float = 10.0) -> VM:
    deadline = time.monotonic() + timeout_s
    vm = one.vm(vm_id)
    while vm.state_name != state_name:
        assert time.monotonic() < deadline, f"VM {vm_id} stayed {vm.state_name}"
        time.sleep(0.05)
        vm = one.vm(vm_id)
    return vm


# --- errors ---------------------------------------------------------------------------------


def test_wrong_credentials_in_the_one_auth_file(
        cloud: CloudServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    auth_file = tmp_path / "one_auth"
    auth_file.write_text("oneadmin:not-the-password\n")
    one = client(cloud.endpoint, session=None, auth_file=str(auth_file),
                 retry_delays_s=(0.0, 0.0))
    with caplog.at_level(logging.DEBUG), pytest.raises(OneAuthError) as err:
        one.vms()
    assert str(err.value) == (f"OpenNebula rejected the credentials in {auth_file} "
                              "(user 'oneadmin'); check the ONE_AUTH file")
    assert attempts(caplog) == 1
    assert "not-the-password" not in caplog.text


def test_right_credentials_from_the_one_auth_file(cloud: CloudServer, tmp_path: Path) -> None:
    auth_file = tmp_path / "one_auth"
    auth_file.write_text(AUTH + "\n")
    assert client(cloud.endpoint, session=None, auth_file=str(auth_file)).version() == "7.4.0"


def test_missing_vm_is_not_found(cloud: CloudServer) -> None:
    with pytest.raises(OneNotFound) as err:
        client(cloud.endpoint, retry_delays_s=(0.0,)).vm(4242)
    assert str(err.value) == ("OpenNebula has no VM 4242 ([one.vm.info] Error getting virtual "
                              "machine [4242].); check the id")


def test_missing_template_is_not_found(cloud: CloudServer) -> None:
    with pytest.raises(OneNotFound) as err:
        client(cloud.endpoint).template_id("no-such-template")
    assert str(err.value) == ("OpenNebula has no VM template named 'no-such-template' that "
                              "user 'oneadmin' can use; create it or fix node_class.template")


def test_bad_templates_are_permanent_bad_requests(
        cloud: CloudServer, caplog: pytest.LogCaptureFixture) -> None:
    one = client(cloud.endpoint, retry_delays_s=(0.0, 0.0))
    with caplog.at_level(logging.WARNING, logger="vcluster.one"), \
            pytest.raises(OneBadRequest) as bad_memory:
        one.allocate('CPU = "1"\nMEMORY = "-1"\n')
    assert str(bad_memory.value) == (
        "OpenNebula refused to allocate a VM: [one.vm.allocate] MEMORY attribute must be a "
        "positive integer value; check the VM template text")
    assert attempts(caplog) == 1
    with pytest.raises(OneBadRequest) as syntax:
        one.allocate("MEMORY = \nCPU")
    assert str(syntax.value) == (
        "OpenNebula refused to allocate a VM: [one.vm.allocate] Parse error: syntax error, "
        "unexpected $end, expecting EQUAL or EQUAL_EMPTY at line 2, columns 11:14; check the "
        "VM template text")


def test_faults_are_bad_requests(cloud: CloudServer) -> None:
    one = client(cloud.endpoint)
    with pytest.raises(OneBadRequest) as unknown:
        one._call("vm.explode", 1, doing="explode VM 1", subject="VM 1", hint="")
    assert str(unknown.value) == ("OpenNebula refused one.vm.explode with XML-RPC fault -506: "
                                  "Method 'one.vm.explode' not defined; check that ONE_XMLRPC "
                                  "points at oned 6 or 7")
    with pytest.raises(OneBadRequest) as wrong_type:
        one._call("vm.info", "one", doing="read VM one", subject="VM one", hint="")
    assert str(wrong_type.value) == ("OpenNebula refused one.vm.info with XML-RPC fault -501: "
                                     "Parameter that is supposed to be integer is not; check "
                                     "that ONE_XMLRPC points at oned 6 or 7")


def test_wrong_url_path(cloud: CloudServer) -> None:
    url = cloud.endpoint.replace("/RPC2", "/RPC3")
    with pytest.raises(OneBadRequest) as err:
        client(url).version()
    assert str(err.value) == (f"OpenNebula at {url} answered HTTP 404 Not Found, so it is not "
                              "oned's XML-RPC endpoint; check ONE_XMLRPC (usually "
                              "http://HOST:2633/RPC2)")


def test_action_refused_in_this_state(cloud: CloudServer) -> None:
    one = client(cloud.endpoint)
    vm_id = one.allocate('CPU = "0.1"\nMEMORY = "64"\n', hold=True)
    assert one.vm(vm_id).state_name == "HOLD"
    with pytest.raises(OneBadRequest) as err:
        one.action("suspend", vm_id)
    assert str(err.value) == (
        f'OpenNebula refused to suspend VM {vm_id}: [one.vm.action] Error performing action '
        '"suspend": This action is not available for state HOLD; the VM is not in a state '
        "that allows it")


def test_server_gone_is_unavailable_and_retried(
        cloud: CloudServer, caplog: pytest.LogCaptureFixture) -> None:
    one = client(cloud.endpoint, retry_delays_s=(0.0, 0.0, 0.0))
    assert one.version() == "7.4.0"
    url = cloud.endpoint
    cloud.stop()
    with caplog.at_level(logging.WARNING, logger="vcluster.one"), \
            pytest.raises(OneUnavailable) as err:
        one.vms()
    assert str(err.value) == (f"cannot reach OpenNebula at {url} (connection refused); "
                              "check ONE_XMLRPC and that oned is running")
    assert attempts(caplog) == 4


# --- a worker VM's life ---------------------------------------------------------------------


def test_worker_vm_from_template_to_done(cloud: CloudServer) -> None:
    raw = pyone.OneServer(cloud.endpoint, session=AUTH)
    raw.template.allocate('NAME = "vcluster-worker"\nCPU = "0.5"\nMEMORY = "32"\n')
    one = client(cloud.endpoint)
    template_id = one.template_id("vcluster-worker")
    extra = worker_vm_extra(
        node_class=SMALL, node_name="vc-small-001", job_id=7, cluster="vc", cpus=1,
        memory_mb=64,
        context=GuestContext(slurm_conf_server="10.111.0.1:6817",
                             join_url="http://10.111.0.1:6830"), join_token="tok")
    vm_id = one.instantiate(template_id, "vc-small-001", extra)

    vm = wait_for(one, vm_id, "RUNNING")
    assert vm.name == "vc-small-001" and vm.is_running and not vm.is_failed
    assert {k: vm.user_template[k] for k in ("VCLUSTER_NODE", "VCLUSTER_JOB",
                                             "VCLUSTER_CLUSTER")} == {
        "VCLUSTER_NODE": "vc-small-001", "VCLUSTER_JOB": "7", "VCLUSTER_CLUSTER": "vc"}
    ctx = vm.context
    assert base64.b64decode(ctx["START_SCRIPT_BASE64"]) == bootstrap_script_bytes()
    assert (ctx["SET_HOSTNAME"], ctx["NETWORK"], ctx["REPORT_READY"], ctx["TOKEN"]) == (
        "vc-small-001", "YES", "YES", "YES")
    assert (ctx["SLURM_CONF_SERVER"], ctx["VCLUSTER_JOIN_URL"], ctx["VCLUSTER_JOIN_TOKEN"]) == (
        "10.111.0.1:6817", "http://10.111.0.1:6830", "tok")
    assert "MUNGE_KEY_BASE64" not in ctx
    assert ctx["VCLUSTER_NODE"] == "vc-small-001" and ctx["VCLUSTER_JOB"] == "7"
    assert [v.vm_id for v in one.vms(cluster="vc")] == [vm_id]
    assert one.vms(cluster="other") == []

    one.update_user_template(vm_id, {"NOTE": 'said "hi" from C:\\tmp'})
    after = one.vm(vm_id).user_template
    assert after["NOTE"] == 'said "hi" from C:\\tmp'
    assert after["VCLUSTER_NODE"] == "vc-small-001"  # merged, not replaced

    one.terminate(vm_id)
    assert wait_for(one, vm_id, "DONE").is_gone
    one.terminate(vm_id)  # again: already DONE is success
    assert one.vms(cluster="vc") == []


def test_terminate_while_shutting_down_is_success(tmp_path: Path) -> None:
    slow = Timings(prolog_s=0.05, boot_s=0.05, shutdown_s=1.5, epilog_s=0.05,
                   monitor_interval_s=0.2)
    server = CloudServer(CloudSettings(state_dir=tmp_path / "slow", port=0, onegate_port=0,
                                       auth=AUTH, timings=slow, scheduler=PLACE_NOW))
    server.start()
    try:
        one = client(server.endpoint)
        vm_id = one.allocate('CPU = "0.1"\nMEMORY = "64"\n')
        wait_for(one, vm_id, "RUNNING")
        one.terminate(vm_id)
        assert one.vm(vm_id).state_name == "SHUTDOWN"
        one.terminate(vm_id)  # a repeat while it shuts down is not an error
        assert wait_for(one, vm_id, "DONE").end_time > 0
    finally:
        server.stop()


def test_missing_vm_terminate_is_success(cloud: CloudServer) -> None:
    client(cloud.endpoint).terminate(999)

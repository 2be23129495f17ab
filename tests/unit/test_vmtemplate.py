"""Template text as oned reads it, and the worker VM's extra template and CONTEXT."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

import contextualization
from vcluster.config import NodeClass
from vcluster.errors import ConfigError
from vcluster.vmtemplate import (
    GuestContext,
    bootstrap_script_bytes,
    escape_value,
    guest_script_bytes,
    render_template,
    worker_vm_extra,
)

GUEST_SCRIPT = b'#!/bin/sh\necho "joining $VCLUSTER_NODE"\n'
SMALL = NodeClass(name="small", prefix="vc-small-", count=4, cpus=2, memory_mb=2048,
                  template="vcluster-worker", vm_options={"SCHED_REQUIREMENTS": 'ID="0"'})
CONTEXT = GuestContext(slurm_conf_server="10.111.0.1:6817", join_url="http://10.111.0.1:6830")
TOKEN = "tok-EN_1"


def test_render_single_and_vector_attributes_in_order() -> None:
    text = render_template({"NAME": "vm 1", "MEMORY": "512",
                            "NIC": {"NETWORK": "vnet", "IP": "10.0.0.5"}, "EMPTY": ""})
    assert text == (
        'NAME = "vm 1"\n'
        'MEMORY = "512"\n'
        'NIC = [\n'
        '  NETWORK = "vnet",\n'
        '  IP = "10.0.0.5" ]\n'
        'EMPTY = ""\n'
    )


def test_render_empty_vector_and_empty_template() -> None:
    assert render_template({"CONTEXT": {}}) == "CONTEXT = [ ]\n"
    assert render_template({}) == ""


def test_quotes_are_escaped_the_way_oned_unescapes_them() -> None:
    # oned turns every \" back into " and leaves other backslashes alone.
    assert escape_value('say "hi"') == '"say \\"hi\\""'
    assert escape_value("C:\\dir\\file") == '"C:\\dir\\file"'
    assert escape_value('a\\"b') == '"a\\\\"b"'
    assert escape_value("two\nlines") == '"two\nlines"'


def test_unescaping_like_oned_gives_the_value_back() -> None:
    for value in ['plain', 'q"uo"te', 'back\\slash', 'mixed\\"both"', '""', 'x"\\y']:
        quoted = escape_value(value)
        inner = quoted[1:-1]
        assert re.fullmatch(r'(?:[^"]|\\")*', inner), quoted  # oned's VALUE_STRING
        assert inner.replace('\\"', '"') == value  # oned's unescape()


def test_values_oned_cannot_read_are_refused() -> None:
    with pytest.raises(ValueError, match="ends with a backslash"):
        escape_value("ends\\")
    with pytest.raises(ValueError, match=r"holds '\]\]>'"):
        escape_value("a]]>b")
    with pytest.raises(ValueError, match="may hold only letters"):
        render_template({"BAD NAME": "x"})
    with pytest.raises(ValueError, match="may hold only letters"):
        render_template({"NIC": {"IP-ADDR": "x"}})


def test_worker_vm_extra_is_exactly_the_contract() -> None:
    text = worker_vm_extra(node_class=SMALL, node_name="vc-small-001", job_id=17,
                           cluster="vc", cpus=2, memory_mb=2048, context=CONTEXT,
                           guest_script=GUEST_SCRIPT,
                        join_token=TOKEN)
    script_b64 = base64.b64encode(GUEST_SCRIPT).decode()
    assert text == (
        'CPU = "2"\n'
        'VCPU = "2"\n'
        'MEMORY = "2048"\n'
        'VCLUSTER_NODE = "vc-small-001"\n'
        'VCLUSTER_JOB = "17"\n'
        'VCLUSTER_CLUSTER = "vc"\n'
        'SCHED_REQUIREMENTS = "ID=\\"0\\""\n'
        'CONTEXT = [\n'
        '  SET_HOSTNAME = "vc-small-001",\n'
        '  NETWORK = "YES",\n'
        '  TOKEN = "YES",\n'
        '  REPORT_READY = "YES",\n'
        f'  START_SCRIPT_BASE64 = "{script_b64}",\n'
        '  VCLUSTER_NODE = "vc-small-001",\n'
        '  VCLUSTER_JOB = "17",\n'
        '  VCLUSTER_CLUSTER = "vc",\n'
        '  SLURM_CONF_SERVER = "10.111.0.1:6817",\n'
        '  VCLUSTER_JOIN_URL = "http://10.111.0.1:6830",\n'
        '  VCLUSTER_JOIN_TOKEN = "tok-EN_1" ]\n'
    )
    assert base64.b64decode(script_b64) == GUEST_SCRIPT


def test_pool_node_without_job_and_conf_path_and_extra_context() -> None:
    ctx = GuestContext(slurm_conf_server="", join_url="http://ctl:6830",
                       slurm_conf_path="/etc/slurm/slurm.conf",
                       extra={"ssh_public_key": "ssh-ed25519 AAAA x@y"})
    text = worker_vm_extra(node_class=SMALL, node_name="vc-small-002", job_id=None,
                           cluster="vc", cpus=1, memory_mb=512, context=ctx,
                           guest_script=GUEST_SCRIPT,
                        join_token=TOKEN)
    assert 'VCLUSTER_JOB = ""\n' in text
    assert '  VCLUSTER_JOB = "",\n' in text
    assert "SLURM_CONF_SERVER" not in text
    assert '  SLURM_CONF_PATH = "/etc/slurm/slurm.conf",\n' in text
    assert text.endswith(
        '  VCLUSTER_JOIN_TOKEN = "tok-EN_1",\n  SSH_PUBLIC_KEY = "ssh-ed25519 AAAA x@y" ]\n')


def test_vm_options_may_not_replace_what_vcluster_sets() -> None:
    bad = NodeClass(name="big", prefix="vc-big-", count=1, cpus=8, memory_mb=8192,
                    template="t", vm_options={"context": "x"})
    with pytest.raises(ConfigError) as err:
        worker_vm_extra(node_class=bad, node_name="vc-big-001", job_id=1, cluster="vc",
                        cpus=8, memory_mb=8192, context=CONTEXT, guest_script=GUEST_SCRIPT,
                        join_token=TOKEN)
    assert str(err.value) == (
        "config: node_class[big].vm_options: may not set CONTEXT: vcluster sets it for every VM"
    )


def test_extra_context_may_not_replace_vcluster_variables() -> None:
    ctx = GuestContext(slurm_conf_server="h:6817", join_url="http://ctl:6830",
                       extra={"set_hostname": "evil"})
    with pytest.raises(ConfigError) as err:
        worker_vm_extra(node_class=SMALL, node_name="vc-small-001", job_id=1, cluster="vc",
                        cpus=1, memory_mb=512, context=ctx, guest_script=GUEST_SCRIPT,
                        join_token=TOKEN)
    assert str(err.value) == (
        "config: extra CONTEXT variable SET_HOSTNAME would replace the one vcluster sets"
    )


def test_a_worker_needs_a_way_to_get_slurm_conf() -> None:
    ctx = GuestContext(slurm_conf_server="", join_url="http://ctl:6830")
    with pytest.raises(ConfigError, match="needs either the slurmctld address"):
        worker_vm_extra(node_class=SMALL, node_name="vc-small-001", job_id=1, cluster="vc",
                        cpus=1, memory_mb=512, context=ctx, guest_script=GUEST_SCRIPT,
                        join_token=TOKEN)


def test_default_guest_script_is_the_packaged_bootstrap() -> None:
    shipped = Path(contextualization.__file__).parent / "vcluster-boot.sh"
    if shipped.exists():
        assert bootstrap_script_bytes() == shipped.read_bytes()
        assert len(shipped.read_bytes()) < 3000  # the CONTEXT carries only this
        text = worker_vm_extra(node_class=SMALL, node_name="vc-small-001", job_id=1,
                               cluster="vc", cpus=1, memory_mb=512, context=CONTEXT,
                               join_token=TOKEN)
        b64 = base64.b64encode(shipped.read_bytes()).decode()
        assert f'  START_SCRIPT_BASE64 = "{b64}",\n' in text
    else:
        with pytest.raises(ConfigError) as err:
            guest_script_bytes()
        assert str(err.value) == (
            "config: the guest script contextualization/vcluster-join.sh is missing from "
            "this vcluster installation; reinstall vcluster"
        )


def test_a_standby_vm_and_a_vm_booted_at_allocation_have_no_node_name_yet() -> None:
    script_b64 = base64.b64encode(GUEST_SCRIPT).decode()
    standby = worker_vm_extra(node_class=SMALL, node_name="", job_id=None, cluster="vc",
                              cpus=2, memory_mb=2048, context=CONTEXT, join_token=TOKEN,
                              guest_script=GUEST_SCRIPT, standby_class="small")
    assert standby == (
        'CPU = "2"\n'
        'VCPU = "2"\n'
        'MEMORY = "2048"\n'
        'VCLUSTER_NODE = ""\n'
        'VCLUSTER_JOB = ""\n'
        'VCLUSTER_CLUSTER = "vc"\n'
        'VCLUSTER_STANDBY = "small"\n'
        'SCHED_REQUIREMENTS = "ID=\\"0\\""\n'
        'CONTEXT = [\n'
        '  NETWORK = "YES",\n'
        '  TOKEN = "YES",\n'
        '  REPORT_READY = "YES",\n'
        f'  START_SCRIPT_BASE64 = "{script_b64}",\n'
        '  VCLUSTER_NODE = "",\n'
        '  VCLUSTER_JOB = "",\n'
        '  VCLUSTER_CLUSTER = "vc",\n'
        '  VCLUSTER_STANDBY = "small",\n'
        '  SLURM_CONF_SERVER = "10.111.0.1:6817",\n'
        '  VCLUSTER_JOIN_URL = "http://10.111.0.1:6830",\n'
        '  VCLUSTER_JOIN_TOKEN = "tok-EN_1" ]\n'
    )
    early = worker_vm_extra(node_class=SMALL, node_name="", job_id=17, cluster="vc",
                            cpus=1, memory_mb=512, context=CONTEXT, guest_script=GUEST_SCRIPT,
                            join_token=TOKEN, standby_class="small", early_node="vc-small-003")
    assert 'VCLUSTER_JOB = "17"\nVCLUSTER_CLUSTER = "vc"\nVCLUSTER_STANDBY = "small"\n' \
           'VCLUSTER_EARLY = "vc-small-003"\n' in early
    assert "SET_HOSTNAME" not in early and "vc-small-003" not in early.split("CONTEXT")[1]
    with pytest.raises(ConfigError, match="VCLUSTER_STANDBY"):
        worker_vm_extra(node_class=NodeClass(
            name="small", prefix="vc-small-", count=4, cpus=2, memory_mb=2048, template="w",
            vm_options={"VCLUSTER_STANDBY": "x"}), node_name="vc-small-001", job_id=None,
            cluster="vc", cpus=1, memory_mb=512, context=CONTEXT, guest_script=GUEST_SCRIPT,
            join_token=TOKEN)
